"""Building a method's decoder from the config: a head of detectron2's ``SEM_SEG_HEADS_REGISTRY``
(``MODEL.SEM_SEG_HEAD.NAME``) on the shapes of the CLIP features."""
from typing import Dict

import torch.nn as nn
from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_sem_seg_head

# detectron2's default MODEL.SEM_SEG_HEAD.NAME: a head for FPN features, never one of ours
DETECTRON2_DEFAULT_HEAD = "SemSegFPNHead"


def clip_feature_shapes(clip) -> Dict[str, ShapeSpec]:
    """The ``input_shape`` a decoder is built for: the image encoder's features (``res2`` ..
    ``res5`` for a ConvNeXt) and ``dense_embedding``, the pixel embeddings in the joint image-text
    space (D channels, the last stride)."""
    shapes = {f"res{i + 2}": ShapeSpec(channels=c, stride=s)
              for i, (c, s) in enumerate(zip(clip.stage_dims, clip.strides))}
    shapes["dense_embedding"] = ShapeSpec(channels=clip.embed_dim, stride=clip.strides[-1])
    return shapes


def build_decoder(cfg: CfgNode, clip, default_head: str) -> nn.Module:
    """``build_sem_seg_head(cfg, clip_feature_shapes(clip))``; where the config leaves
    MODEL.SEM_SEG_HEAD.NAME at detectron2's default, the method's own decoder ``default_head``."""
    if cfg.MODEL.SEM_SEG_HEAD.NAME == DETECTRON2_DEFAULT_HEAD:
        cfg = cfg.clone()
        cfg.defrost()
        cfg.MODEL.SEM_SEG_HEAD.NAME = default_head
    return build_sem_seg_head(cfg, clip_feature_shapes(clip))
