"""Method decoders, registered in detectron2's ``SEM_SEG_HEADS_REGISTRY`` where a config chooses
them (``MODEL.SEM_SEG_HEAD.NAME``), and the grouping head of ZeroSeg / ViL-Seg."""
from .build import build_decoder, clip_feature_shapes
from .err_seg_decoder import ERRSegDecoder
from .grouping_head import GroupingSegmentationHead
from .sed_decoder import SEDDecoder

__all__ = ["SEDDecoder", "ERRSegDecoder", "GroupingSegmentationHead", "build_decoder", "clip_feature_shapes"]
