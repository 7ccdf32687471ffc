"""ERR-Seg: efficient and robust open-vocabulary semantic segmentation with channel reduction.

CLIP ConvNeXt encoder with its text encoder partly fine-tuned, cost maps at strides 16 and 32
(HSM; the stride-16 embeddings need a stride-1 down-sampling added to the encoder, below), the
vocabulary reduced to the top-N classes per image before the decoder (CRM), four efficient spatial /
class fusion layers (ESCF) and gradual upsampling (GUD), the decoder being ``MODEL.SEM_SEG_HEAD.NAME``
(``ERRSegDecoder``). Images are resized to ``MODEL.ERR_SEG.CLIP_RESOLUTION`` for training and
``TEST_RESOLUTION`` for inference.
"""
import copy
from typing import Dict, List

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..cost_map import cost_map
from ..fast_paths import apply_fast_paths
from ..heads import build_decoder
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


def add_stride1_downsample(clip) -> nn.Module:
    """ERR-Seg's stride-1 down-sampling, ``visual.modify_downsample`` of the CLIP model as in the
    authors' open_clip: LayerNorm2d, zero padding of 1, the 2x2 conv at stride 1 (C4 -> C5). A
    module of its own, initialised from the last stage's down-sampling (the CLIP weights loaded),
    so that it can be frozen or trained apart from it. ConvNeXt only; idempotent."""
    visual = clip.model.visual
    if clip.kind != "convnext":
        raise NotImplementedError("The stride-1 down-sampling (ERR-Seg) needs a ConvNeXt CLIP.")
    if not hasattr(visual, "modify_downsample"):
        norm, conv = visual.trunk.stages[3].downsample
        stride1 = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=1,
                            bias=conv.bias is not None)
        stride1.load_state_dict(conv.state_dict())
        visual.modify_downsample = nn.Sequential(copy.deepcopy(norm), nn.ZeroPad2d((1, 1, 1, 1)), stride1)
        visual.modify_downsample.requires_grad_(conv.weight.requires_grad)
    return visual.modify_downsample


def dense_embedding_stride16(clip, feats: Dict[str, torch.Tensor]) -> torch.Tensor:
    """ERR-Seg's hierarchical semantics: joint-space embeddings at stride 16, (B, D, H/16, W/16).

    res4 goes through :func:`add_stride1_downsample`'s module, is resized back to the res4 grid
    (bilinear), then through the last stage's blocks and the CLIP head."""
    visual = clip.model.visual
    if not hasattr(visual, "modify_downsample"):
        raise RuntimeError("Stride-16 dense embeddings need the stride-1 down-sampling: call "
                           "add_stride1_downsample(clip) when building the model (ERR-Seg does).")
    res4 = feats["res4"]
    x = F.interpolate(visual.modify_downsample(res4), size=res4.shape[-2:], mode="bilinear", align_corners=False)
    return clip.dense_embedding({"res5": visual.trunk.stages[3].blocks(x)})


@META_ARCH_REGISTRY.register()
class ERRSeg(OpenVocabSegmentor):
    DATASET_SETTINGS = {"err_seg_crm_test": "crm_test"}

    @configurable
    def __init__(self, *, decoder: nn.Module, clip_resolution=(640, 640), test_resolution=(640, 640),
                 crm_train: int = 32, crm_test: int = 32, clip_finetune: str = "weight", **kwargs):
        super().__init__(**kwargs)
        self.decoder = decoder
        self.clip_resolution, self.test_resolution = tuple(clip_resolution), tuple(test_resolution)
        self.crm_train, self.crm_test = crm_train, crm_test
        add_stride1_downsample(self.clip)  # HSM's stride-16 branch (visual.modify_downsample)
        if clip_finetune == "weight":
            for n, p in self.clip.model.named_parameters():
                p.requires_grad_(err_seg_trainable(n))
        elif clip_finetune == "full":
            for n, p in self.clip.model.named_parameters():
                p.requires_grad_(not n.startswith("logit_"))
        else:
            raise ValueError(f"MODEL.ERR_SEG.CLIP_FINETUNE={clip_finetune!r}: use 'weight' or 'full'.")
        apply_fast_paths(self, self.fast_paths, self.decoder.compile_targets())

    @classmethod
    def from_config(cls, cfg) -> Dict:
        kwargs = cls.base_config(cfg)
        clip, e = kwargs["clip"], cfg.MODEL.ERR_SEG
        if clip.kind != "convnext":
            raise ValueError(f"ERR-Seg needs a ConvNeXt CLIP (MODEL.CLIP.NAME), got {clip.name}.")
        kwargs["decoder"] = build_decoder(cfg, clip, "ERRSegDecoder")
        kwargs.update(clip_resolution=e.CLIP_RESOLUTION, test_resolution=e.TEST_RESOLUTION,
                      crm_train=e.CRM_TRAIN, crm_test=e.CRM_TEST, clip_finetune=e.CLIP_FINETUNE)
        return kwargs

    def predict(self, images: torch.Tensor, gt_classes=None) -> Dict:
        """(B, 3, H, W) normalised images -> ``logits`` (B, N, H/4, W/4) and ``kept`` (B, K).
        ``gt_classes``: (B, N) bool, the classes in each image's labels (training: CRM keeps them)."""
        feats = self.clip.forward_features(self.fast_paths.format_images(images))
        text = self.class_embeddings()  # (N, P, D)
        costs = [cost_map(dense_embedding_stride16(self.clip, feats), text),
                 cost_map(self.clip.dense_embedding(feats), text)]
        k = self.crm_train if self.training else self.crm_test
        return self.decoder(costs, text[None], feats, num_kept=k or None, gt_classes=gt_classes,
                            class_chunk=self.fast_paths.class_chunk)

    def present_classes(self, targets: torch.Tensor) -> torch.Tensor:
        """(B, H, W) targets -> (B, N) bool: the vocabulary's classes each image's labels contain."""
        n = len(self.vocabulary)
        ids = torch.where(targets == self.ignore_value, n, targets).flatten(1)  # ignore -> column n
        return torch.zeros(ids.shape[0], n + 1, device=ids.device).scatter_(1, ids, 1.0)[:, :n] > 0

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            images, targets = self.fixed_resolution_batch(batched_inputs, self.clip_resolution)
            logits = self.predict(images, gt_classes=self.present_classes(targets))["logits"]
            return self.segmentation_losses([logits], targets)
        images = self.fixed_resolution_images(batched_inputs, self.test_resolution)
        with self.fast_paths.autocast(images.device):  # TEST.AMP
            logits = self.predict(images)["logits"]
        return self.output_probs(logits.float().sigmoid(), batched_inputs)
