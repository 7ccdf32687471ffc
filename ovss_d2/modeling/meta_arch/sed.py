"""SED: a simple encoder-decoder for open-vocabulary semantic segmentation (CVPR 2024).

CLIP ConvNeXt encoder (res2..res5; res5 through the CLIP head gives dense embeddings in the text
space), a cost map over classes x templates, the gradual fusion decoder (``MODEL.SEM_SEG_HEAD.NAME``,
``SEDDecoder``) and category early rejection. Images are resized to ``MODEL.SED.CLIP_RESOLUTION``
(768 x 768 as in the official code) and the stride-4 output is resized back to each image's size.
"""
from typing import Dict, List

import torch
import torch.nn as nn
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..cost_map import cost_map
from ..fast_paths import apply_fast_paths
from ..heads import build_decoder
from ..heads.sed_decoder import GUIDANCE_FEATURES
from .base import OpenVocabSegmentor


@META_ARCH_REGISTRY.register()
class SED(OpenVocabSegmentor):
    @configurable
    def __init__(self, *, decoder: nn.Module, clip_resolution=(768, 768), early_rejection_topk: int = 8,
                 **kwargs):
        super().__init__(**kwargs)
        self.decoder = decoder
        self.clip_resolution = tuple(clip_resolution)
        self.early_rejection_topk = early_rejection_topk
        apply_fast_paths(self, self.fast_paths, self.decoder.compile_targets())

    @classmethod
    def from_config(cls, cfg) -> Dict:
        kwargs = cls.base_config(cfg)
        clip = kwargs["clip"]
        if clip.kind != "convnext":
            raise ValueError(f"SED needs a ConvNeXt CLIP (MODEL.CLIP.NAME), got {clip.name}.")
        kwargs["decoder"] = build_decoder(cfg, clip, "SEDDecoder")
        kwargs["clip_resolution"] = cfg.MODEL.SED.CLIP_RESOLUTION
        kwargs["early_rejection_topk"] = cfg.MODEL.SED.EARLY_REJECTION_TOPK
        return kwargs

    def predict(self, images: torch.Tensor) -> Dict:
        """(B, 3, H, W) normalised images at the CLIP resolution -> decoder outputs
        (``logits`` (B, N, H/4, W/4), ``aux``, ``kept``)."""
        feats = self.clip.forward_features(self.fast_paths.format_images(images))
        dense = self.clip.dense_embedding(feats)  # (B, D, H/32, W/32)
        cost = cost_map(dense, self.class_embeddings())  # (B, P, N, H/32, W/32)
        # skip-layer fusion reads the encoder features without sending gradients back into it
        guidance = [feats[k].detach() for k in GUIDANCE_FEATURES]
        return self.decoder(cost, guidance, topk=self.early_rejection_topk, class_chunk=self.fast_paths.class_chunk)

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            images, targets = self.fixed_resolution_batch(batched_inputs, self.clip_resolution)
            out = self.predict(images)
            return self.segmentation_losses([out["logits"], *out["aux"]], targets)
        images = self.fixed_resolution_images(batched_inputs, self.clip_resolution)
        with self.fast_paths.autocast(images.device):  # TEST.AMP
            logits = self.predict(images)["logits"]
        return self.output_probs(logits.float().sigmoid(), batched_inputs)
