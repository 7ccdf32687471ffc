"""SED's decoder: cost-map embedding, three gradual-fusion layers with category early rejection,
and per-class mask heads. Registered as ``SEDDecoder`` in detectron2's ``SEM_SEG_HEADS_REGISTRY``."""
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from ..clip import resolve_templates
from ..cost_aggregation import (CostEmbedding, GradualFusionLayer, chunked_over_classes, fill_rejected,
                                select_class_rows, topk_union)

GUIDANCE_FEATURES = ("res4", "res3", "res2")  # the skip-layer guidance, coarse to fine


@SEM_SEG_HEADS_REGISTRY.register()
class SEDDecoder(nn.Module):
    """Gradual fusion decoder (SED, CVPR 2024).

    Args:
        num_templates: P, the template axis of the cost map (80).
        guidance_dims: channels of the encoder features used as skip guidance, coarse to fine
            (ConvNeXt-B: res4, res3, res2 = 512, 256, 128).
        hidden_dim: width of the embedded cost map (128).
        decoder_dims: output widths of the three layers (64, 32, 16).
        guidance_proj_dims: widths the guidance is reduced to (32, 16, 8).
        kernel_sizes: depth-wise kernels of the spatial blocks (9, 9, 9).
        num_heads, pool: class linear attention heads and pooling (4, 2x2).
        test_pool: the pooling at inference (the authors' eval.sh: 1x1); None: ``pool``.
    """

    @configurable
    def __init__(self, num_templates: int, guidance_dims: Sequence[int], hidden_dim: int = 128,
                 decoder_dims: Sequence[int] = (64, 32, 16), guidance_proj_dims: Sequence[int] = (32, 16, 8),
                 kernel_sizes: Sequence[int] = (9, 9, 9), num_heads: int = 4, pool: Sequence[int] = (2, 2),
                 cost_kernel: int = 7, layer_scale_init: float = 1.0, test_pool: Optional[Sequence[int]] = None):
        super().__init__()
        assert len(decoder_dims) == len(guidance_dims) == len(guidance_proj_dims) == len(kernel_sizes)
        self.cost_embed = CostEmbedding(num_templates, hidden_dim, cost_kernel)
        self.guidance_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d, dp, 3, padding=1), nn.ReLU())
            for d, dp in zip(guidance_dims, guidance_proj_dims))
        cost_dims = [num_templates] + list(guidance_proj_dims[:-1])
        self.cost_guidance_proj = nn.ModuleList(
            nn.Sequential(nn.ConvTranspose2d(d, dp, 2, stride=2), nn.ReLU())
            for d, dp in zip(cost_dims, guidance_proj_dims))
        dims = [hidden_dim] + list(decoder_dims)
        self.layers = nn.ModuleList(
            GradualFusionLayer(dims[i], dims[i + 1], guidance_proj_dims[i], kernel_sizes[i], num_heads, pool,
                               layer_scale_init, test_pool)
            for i in range(len(decoder_dims)))
        self.aux_heads = nn.ModuleList(nn.Conv2d(dims[i], 1, 3, padding=1) for i in range(len(decoder_dims)))
        self.head = nn.Conv2d(dims[-1], 1, 3, padding=1)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]) -> Dict:
        """``MODEL.SED``; ``input_shape``: the CLIP features' (``heads.build.clip_feature_shapes``)."""
        sed = cfg.MODEL.SED
        return {
            "num_templates": len(resolve_templates(cfg.MODEL.TEXT.TEMPLATES, cfg.MODEL.TEXT.CUSTOM_TEMPLATES)),
            "guidance_dims": [input_shape[k].channels for k in GUIDANCE_FEATURES],
            "hidden_dim": sed.HIDDEN_DIM,
            "decoder_dims": sed.DECODER_DIMS,
            "guidance_proj_dims": sed.GUIDANCE_PROJ_DIMS,
            "kernel_sizes": sed.KERNEL_SIZES,
            "num_heads": sed.NUM_HEADS,
            "pool": sed.POOLING_SIZE,
            "test_pool": sed.TEST_POOLING_SIZE or None,
        }

    def compile_targets(self) -> List[nn.Module]:
        """The per-class layers ``MODEL.COMPILE`` compiles."""
        return list(self.layers)

    def forward(self, cost: torch.Tensor, guidance: List[torch.Tensor], topk: Optional[int] = None,
                class_chunk: int = 0) -> Dict:
        """
        Args:
            cost: (B, P, N, h, w) cosine cost map at stride 32.
            guidance: encoder features at strides 16, 8, 4: [(B, C_i, 2^i h, 2^i w)] (already
                detached by the caller: no gradient flows from here into the encoder).
            topk: early rejection at inference: after each layer's auxiliary head, only the union
                of every pixel's top-``topk`` classes goes on. None or 0: off.
            class_chunk: at inference, run the per-class layers this many classes at a time (less
                memory, same outputs). 0: all at once.

        Returns:
            ``logits``: (B, N, 8h, 8w) mask logits (rejected classes: a large negative value);
            ``aux``: in training, the auxiliary logits [(B, N, 2^i h, 2^i w)] of the three layers'
            inputs, computed on detached features (they never train the decoder);
            ``kept``: (K,) indices of the classes that reached the final head.
        """
        b, _, n, _, _ = cost.shape
        chunk = 0 if self.training else class_chunk
        x = self.cost_embed(cost)  # (B*N, hidden, h, w)
        guid = [proj(g) for proj, g in zip(self.guidance_proj, guidance)]
        # the cost guidance of layer i is the cost map up-sampled i + 1 times, class by class: it is
        # computed one level per layer, after that layer's rejection, for the kept classes only
        cost_guid = cost.transpose(1, 2).flatten(0, 1)  # (B*N, P, h, w)
        kept = torch.arange(n, device=cost.device)
        aux = []
        reject = bool(topk) and not self.training
        for i, layer in enumerate(self.layers):
            if self.training:
                aux.append(self.aux_heads[i](x.detach()).view(b, -1, *x.shape[-2:]))
            elif reject:
                scores = self.aux_heads[i](x).view(b, -1, *x.shape[-2:])
                keep = topk_union(scores, topk)
                if keep.numel() < kept.numel():
                    x, cost_guid = (select_class_rows(t, kept.numel(), keep) for t in (x, cost_guid))
                    kept = kept[keep]
            cost_guid = chunked_over_classes(self.cost_guidance_proj[i], cost_guid, kept.numel(), chunk)
            x = layer(x, kept.numel(), guid[i], cost_guid, chunk)
        logits = self.head(x).view(b, kept.numel(), *x.shape[-2:])
        if kept.numel() < n:
            logits = fill_rejected(logits, kept, n)
        return {"logits": logits, "aux": aux, "kept": kept}
