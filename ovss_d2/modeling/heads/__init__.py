from .err_seg_decoder import ERRSegDecoder
from .grouping_head import GroupingSegmentationHead
from .sed_decoder import SEDDecoder

__all__ = ["SEDDecoder", "ERRSegDecoder", "GroupingSegmentationHead"]
