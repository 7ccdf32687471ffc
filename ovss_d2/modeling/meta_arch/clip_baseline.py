"""The training-free CLIP dense baseline (MaskCLIP-style): frozen CLIP dense embeddings scored
against the vocabulary's template-ensembled text embeddings.

It is the "CLIP + Seg" baseline of the ViL-Seg paper and the starting point of SED's ablation.
With ``MODEL.CLIP.FREEZE_IMAGE False`` the same model fine-tunes the image encoder with per-pixel
cross-entropy on the cost map (the simplest trained open-vocabulary segmentor).
"""
import math
from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..cost_map import cost_map
from ..fast_paths import apply_fast_paths
from .base import OpenVocabSegmentor


@META_ARCH_REGISTRY.register()
class CLIPDenseBaseline(OpenVocabSegmentor):
    @configurable
    def __init__(self, *, logit_scale: float = 100.0, learn_logit_scale: bool = False, **kwargs):
        super().__init__(**kwargs)
        for p in self.clip.value_path_parameters():  # unused by the dense embedding: keep DDP happy
            p.requires_grad_(False)
        log_scale = torch.tensor(math.log(logit_scale))
        if learn_logit_scale:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)
        apply_fast_paths(self, self.fast_paths)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        kwargs = cls.base_config(cfg)
        kwargs["logit_scale"] = cfg.MODEL.CLIP_BASELINE.LOGIT_SCALE
        kwargs["learn_logit_scale"] = cfg.MODEL.CLIP_BASELINE.LEARN_LOGIT_SCALE
        return kwargs

    def segment(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, N, h, w) logits at the feature stride."""
        text = self.class_embeddings().mean(dim=1, keepdim=True)  # (N, 1, D) template ensemble
        feats = self.clip.forward_features(self.fast_paths.format_images(images), last_block=False)
        dense = self.clip.dense_embedding(feats)  # (B, D, h, w)
        return cost_map(dense, text)[:, 0] * self.log_logit_scale.exp()

    def forward(self, batched_inputs: List[Dict]):
        images = self.preprocess_images(batched_inputs)
        padded_size = images.tensor.shape[-2:]
        if self.training:
            logits = self.resize_to(self.segment(images.tensor), padded_size)
            targets = self.sem_seg_targets(batched_inputs, images)
            return {"loss_sem_seg": F.cross_entropy(logits, targets, ignore_index=self.ignore_value)}
        with self.fast_paths.autocast(images.tensor.device):  # TEST.AMP
            logits = self.segment(images.tensor)
        probs = self.resize_to(logits.float(), padded_size).softmax(dim=1)
        return self.output_probs(probs, batched_inputs, images.image_sizes)
