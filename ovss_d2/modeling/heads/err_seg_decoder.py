"""ERR-Seg's decoder: two-scale cost maps merged FPN-style (HSM), channel reduction of the
vocabulary (CRM), efficient spatial and class fusion (ESCF) and gradual upsampling (GUD).
Registered as ``ERRSegDecoder`` in detectron2's ``SEM_SEG_HEADS_REGISTRY``."""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..clip import resolve_templates
from ..cost_aggregation import (CostEmbedding, ESCFLayer, GuidedUpsampling, chunked_over_classes, crm_select,
                                fill_rejected, select_classes)

# The logit of the classes CRM drops, the authors' value. It matters in training: a ground-truth
# class dropped because an image has more than K of them costs BCE 100 on each of its pixels.
DROPPED_LOGIT = -100.0


@SEM_SEG_HEADS_REGISTRY.register()
class ERRSegDecoder(nn.Module):
    """
    Args:
        num_templates: P of the cost maps (1 in ERR-Seg).
        stage_dims: encoder channels of res2..res5 (ConvNeXt-B: 128, 256, 512, 1024).
        text_dim: CLIP embedding size (640 / 768).
        cost_dim, fusion_dim: width of the embedded cost maps (256) and of the aggregator (128).
        num_layers, sr_ratios, num_heads: aggregator depth (4), sequence reduction (2), heads (4).
        decoder_dims, guidance_proj_dims: GUD widths (64, 32, 16) and guidance widths (32, 16, 8).
    """

    @configurable
    def __init__(self, num_templates: int, stage_dims: Sequence[int], text_dim: int, cost_dim: int = 256,
                 fusion_dim: int = 128, num_layers: int = 4, sr_ratios: Sequence[int] = (2, 2, 2, 2),
                 num_heads: int = 4, decoder_dims: Sequence[int] = (64, 32, 16),
                 guidance_proj_dims: Sequence[int] = (32, 16, 8), pool: Sequence[int] = (2, 2),
                 drop_path_step: float = 0.025, guidance_clamp: float = 16.0):
        super().__init__()
        self.guidance_clamp = guidance_clamp
        self.cost_embeds = nn.ModuleList(CostEmbedding(num_templates, cost_dim, 7) for _ in range(2))
        self.cost_fusion = nn.Conv2d(cost_dim, fusion_dim, 1)
        res5, res4 = stage_dims[3], stage_dims[2]
        self.agg_guidance_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d, cost_dim, 3, padding=1), nn.ReLU6(inplace=True)) for d in (res5, res4))
        self.agg_guidance_fusion = nn.Conv2d(cost_dim, fusion_dim, 1)
        self.dec_guidance_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d, dp, 3, padding=1), nn.ReLU6(inplace=True))
            for d, dp in zip(stage_dims[:3][::-1], guidance_proj_dims))
        self.text_guidance_proj = nn.Sequential(nn.Linear(text_dim, fusion_dim), nn.GELU())
        self.layers = nn.ModuleList(
            ESCFLayer(fusion_dim, num_heads, sr_ratios[i], drop_path_step * i, pool) for i in range(num_layers))
        dims = [fusion_dim] + list(decoder_dims)
        self.up = nn.ModuleList(GuidedUpsampling(dims[i], dims[i + 1], guidance_proj_dims[i], dims[i + 1],
                                                 group_channels=8, upsample=i > 0)
                                for i in range(len(decoder_dims)))
        self.head = nn.Conv2d(dims[-1], 1, 1)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> Dict:
        """``MODEL.ERR_SEG``; ``input_shape``: the CLIP features' (``heads.build.clip_feature_shapes``)."""
        e = cfg.MODEL.ERR_SEG
        return {
            "num_templates": len(resolve_templates(cfg.MODEL.TEXT.TEMPLATES, cfg.MODEL.TEXT.CUSTOM_TEMPLATES)),
            "stage_dims": [input_shape[f"res{i}"].channels for i in (2, 3, 4, 5)],
            "text_dim": input_shape["dense_embedding"].channels,
            "cost_dim": e.COST_DIM, "fusion_dim": e.FUSION_DIM, "num_layers": e.NUM_LAYERS, "sr_ratios": e.SR_RATIOS,
            "num_heads": e.NUM_HEADS, "decoder_dims": e.DECODER_DIMS, "guidance_proj_dims": e.GUIDANCE_PROJ_DIMS,
        }

    def compile_targets(self) -> List[nn.Module]:
        """The per-class layers ``MODEL.COMPILE`` compiles."""
        return [*self.layers, *self.up]

    def forward(self, costs: List[torch.Tensor], text: torch.Tensor, feats: Dict[str, torch.Tensor],
                num_kept: Optional[int] = None, gt_classes: Optional[torch.Tensor] = None,
                class_chunk: int = 0) -> Dict:
        """
        Args:
            costs: cost maps at strides 16 and 32: [(B, P, N, H/16, W/16), (B, P, N, H/32, W/32)].
            text: (B or 1, N, P, D) text embeddings (for the text guidance).
            feats: encoder features res2..res5.
            num_kept: CRM's N (classes kept per image); None keeps all.
            gt_classes: (B, N) bool, the classes present in each image's labels (training).
            class_chunk: at inference, run the per-class parts this many classes at a time (less
                memory, same outputs). 0: all at once.

        Returns:
            ``logits`` (B, N, H/4, W/4), dropped classes at ``DROPPED_LOGIT``; ``kept``
            (B, K) the kept class indices.
        """
        b, _, n = costs[0].shape[:3]
        c = self.guidance_clamp
        res5, res4, res3, res2 = (feats[k].clamp(-c, c) for k in ("res5", "res4", "res3", "res2"))
        text = text.expand(b, -1, -1, -1)
        if num_kept is not None and num_kept < n:
            kept = crm_select(costs[0], num_kept, gt_classes)  # (B, K)
            costs = [select_classes(cm, kept, dim=2) for cm in costs]
            text = select_classes(text, kept)
        else:
            kept = torch.arange(n, device=costs[0].device).expand(b, n)
        k = kept.shape[1]
        chunk = 0 if self.training else class_chunk

        def hierarchical_semantics(c16: torch.Tensor, c32: torch.Tensor) -> torch.Tensor:
            # embed both cost maps (rows: (B*K, P, h, w)), merge at stride 16
            e16, e32 = (embed.embed_rows(cm) for embed, cm in zip(self.cost_embeds, (c16, c32)))
            return self.cost_fusion((e16 + F.interpolate(e32, size=e16.shape[-2:], mode="bilinear",
                                                         align_corners=False)) / 2)

        c16, c32 = (cm.transpose(1, 2).flatten(0, 1) for cm in costs)
        x = chunked_over_classes(hierarchical_semantics, c16, k, chunk, c32)  # (B*K, 128, H/16, W/16)
        g32, g16 = (proj(f) for proj, f in zip(self.agg_guidance_proj, (res5, res4)))
        guidance = self.agg_guidance_fusion((g16 + F.interpolate(g32, size=g16.shape[-2:], mode="bilinear",
                                                                 align_corners=False)) / 2)
        t = F.normalize(text.mean(dim=2), dim=-1)
        text_guidance = self.text_guidance_proj(t)  # (B, K, 128)
        for layer in self.layers:
            x = layer(x, guidance, text_guidance, chunk)
        # gradual upsampling reads the middle-layer features without sending gradients back
        dec_guidance = [proj(f.detach()) for proj, f in zip(self.dec_guidance_proj, (res4, res3, res2))]
        for up, g in zip(self.up, dec_guidance):
            x = chunked_over_classes(lambda rows: up(rows, g), x, k, chunk)
        logits = self.head(x).view(b, k, *x.shape[-2:])
        if k < n:
            logits = fill_rejected(logits, kept, n, DROPPED_LOGIT)
        return {"logits": logits, "kept": kept}


