"""SED: a simple encoder-decoder for open-vocabulary semantic segmentation (CVPR 2024).

CLIP ConvNeXt encoder (res2..res5; res5 through the CLIP head gives dense embeddings in the text
space), a cost map over classes x templates, the gradual fusion decoder and category early
rejection. Images are resized to ``MODEL.SED.CLIP_RESOLUTION`` (768 x 768 as in the official
code) and the stride-4 output is resized back to each image's size.
"""
from typing import Dict, List

import torch
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..cost_map import cost_map
from ..fast_paths import apply_fast_paths
from ..heads import SEDDecoder
from .base import OpenVocabSegmentor


@META_ARCH_REGISTRY.register()
class SED(OpenVocabSegmentor):
    @configurable
    def __init__(self, *, decoder: SEDDecoder, clip_resolution=(768, 768), early_rejection_topk: int = 8,
                 **kwargs):
        super().__init__(**kwargs)
        if self.clip.kind != "convnext":
            raise ValueError(f"SED needs a ConvNeXt CLIP (MODEL.CLIP.NAME), got {self.clip.name}.")
        self.decoder = decoder
        self.clip_resolution = tuple(clip_resolution)
        self.early_rejection_topk = early_rejection_topk
        apply_fast_paths(self, self.fast_paths, self.decoder.layers)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        kwargs = cls.base_config(cfg)
        clip, sed = kwargs["clip"], cfg.MODEL.SED
        kwargs["decoder"] = SEDDecoder(
            num_templates=len(kwargs["templates"]),
            guidance_dims=clip.stage_dims[:3][::-1],
            hidden_dim=sed.HIDDEN_DIM,
            decoder_dims=sed.DECODER_DIMS,
            guidance_proj_dims=sed.GUIDANCE_PROJ_DIMS,
            kernel_sizes=sed.KERNEL_SIZES,
            num_heads=sed.NUM_HEADS,
            pool=sed.POOLING_SIZE,
            test_pool=sed.TEST_POOLING_SIZE or None,
        )
        kwargs["clip_resolution"] = sed.CLIP_RESOLUTION
        kwargs["early_rejection_topk"] = sed.EARLY_REJECTION_TOPK
        return kwargs

    def predict(self, images: torch.Tensor) -> Dict:
        """(B, 3, H, W) normalised images at the CLIP resolution -> decoder outputs
        (``logits`` (B, N, H/4, W/4), ``aux``, ``kept``)."""
        feats = self.clip.forward_features(self.fast_paths.format_images(images))
        dense = self.clip.dense_embedding(feats)  # (B, D, H/32, W/32)
        cost = cost_map(dense, self.class_embeddings())  # (B, P, N, H/32, W/32)
        # skip-layer fusion reads the encoder features without sending gradients back into it
        guidance = [feats[k].detach() for k in ("res4", "res3", "res2")]
        return self.decoder(cost, guidance, topk=self.early_rejection_topk, class_chunk=self.fast_paths.class_chunk)

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            def predict(images, targets):
                out = self.predict(images)
                return [out["logits"]] + out["aux"]
            return self.fixed_resolution_losses(batched_inputs, self.clip_resolution, predict)
        return self.fixed_resolution_inference(batched_inputs, self.clip_resolution,
                                               lambda images: self.predict(images)["logits"])
