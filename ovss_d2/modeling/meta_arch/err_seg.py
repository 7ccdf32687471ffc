"""ERR-Seg: efficient and robust open-vocabulary semantic segmentation with channel reduction.

CLIP ConvNeXt encoder with its text encoder partly fine-tuned, cost maps at strides 16 and 32
(HSM), the vocabulary reduced to the top-N classes per image before the decoder (CRM), four
efficient spatial / class fusion layers (ESCF) and gradual upsampling (GUD). Images are resized
to ``MODEL.ERR_SEG.CLIP_RESOLUTION`` for training and ``TEST_RESOLUTION`` for inference.
"""
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..cost_map import cost_map
from ..fast_paths import apply_fast_paths
from ..heads import ERRSegDecoder
from .base import OpenVocabSegmentor


def err_seg_trainable(name: str) -> bool:
    """The authors' "weight" strategy. Image tower: layer scales (``gamma``) and the weights (not
    biases) of parameters named ``mlp``, ``conv_dw`` or ``down_sampling`` -- a name timm's ConvNeXt
    never uses (it says ``downsample``), so the down-sampling layers, the stride-1 one
    (``modify_downsample``) included, stay frozen, as in the official runs. Text transformer:
    attention ``in_proj_weight`` and MLP ``c_fc.weight``."""
    if name.startswith("visual."):
        return "gamma" in name or (any(k in name for k in ("mlp", "conv_dw", "down_sampling")) and "weight" in name)
    if "transformer" in name:
        return "in_proj_weight" in name or "c_fc.weight" in name
    return False


@META_ARCH_REGISTRY.register()
class ERRSeg(OpenVocabSegmentor):
    DATASET_SETTINGS = {"err_seg_crm_test": "crm_test"}

    @configurable
    def __init__(self, *, decoder: ERRSegDecoder, clip_resolution=(640, 640), test_resolution=(640, 640),
                 crm_train: int = 32, crm_test: int = 32, clip_finetune: str = "weight", **kwargs):
        super().__init__(**kwargs)
        if self.clip.kind != "convnext":
            raise ValueError(f"ERR-Seg needs a ConvNeXt CLIP (MODEL.CLIP.NAME), got {self.clip.name}.")
        self.decoder = decoder
        self.clip_resolution, self.test_resolution = tuple(clip_resolution), tuple(test_resolution)
        self.crm_train, self.crm_test = crm_train, crm_test
        self.clip.add_stride1_downsample()  # HSM's stride-16 branch (visual.modify_downsample)
        if clip_finetune == "weight":
            for n, p in self.clip.model.named_parameters():
                p.requires_grad_(err_seg_trainable(n))
        elif clip_finetune == "full":
            for n, p in self.clip.model.named_parameters():
                p.requires_grad_(not n.startswith("logit_"))
        else:
            raise ValueError(f"MODEL.ERR_SEG.CLIP_FINETUNE={clip_finetune!r}: use 'weight' or 'full'.")
        apply_fast_paths(self, self.fast_paths, [*self.decoder.layers, *self.decoder.up])

    @classmethod
    def from_config(cls, cfg) -> Dict:
        kwargs = cls.base_config(cfg)
        clip, e = kwargs["clip"], cfg.MODEL.ERR_SEG
        kwargs["decoder"] = ERRSegDecoder(
            num_templates=len(kwargs["templates"]), stage_dims=clip.stage_dims, text_dim=clip.embed_dim,
            cost_dim=e.COST_DIM, fusion_dim=e.FUSION_DIM, num_layers=e.NUM_LAYERS, sr_ratios=e.SR_RATIOS,
            num_heads=e.NUM_HEADS, decoder_dims=e.DECODER_DIMS, guidance_proj_dims=e.GUIDANCE_PROJ_DIMS)
        kwargs.update(clip_resolution=e.CLIP_RESOLUTION, test_resolution=e.TEST_RESOLUTION,
                      crm_train=e.CRM_TRAIN, crm_test=e.CRM_TEST, clip_finetune=e.CLIP_FINETUNE)
        return kwargs

    def predict(self, images: torch.Tensor, gt_classes=None) -> Dict:
        """(B, 3, H, W) normalised images -> ``logits`` (B, N, H/4, W/4) and ``kept`` (B, K)."""
        feats = self.clip.forward_features(self.fast_paths.format_images(images))
        text = self.class_embeddings()  # (N, P, D)
        costs = [cost_map(self.clip.dense_embedding_stride16(feats), text),
                 cost_map(self.clip.dense_embedding(feats), text)]
        k = self.crm_train if self.training else self.crm_test
        return self.decoder(costs, text[None], feats, num_kept=k or None, gt_classes=gt_classes,
                            class_chunk=self.fast_paths.class_chunk)

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            def predict(images, targets):
                n = len(self.vocabulary)
                ids = torch.where(targets == self.ignore_value, n, targets).flatten(1)  # ignore -> column n
                present = torch.zeros(ids.shape[0], n + 1, device=ids.device).scatter_(1, ids, 1.0)[:, :n] > 0
                return [self.predict(images, gt_classes=present)["logits"]]
            return self.fixed_resolution_losses(batched_inputs, self.clip_resolution, predict)
        return self.fixed_resolution_inference(batched_inputs, self.test_resolution,
                                               lambda images: self.predict(images)["logits"])
