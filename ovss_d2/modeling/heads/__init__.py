from .err_seg_decoder import ERRSegDecoder
from .sed_decoder import SEDDecoder

__all__ = ["SEDDecoder", "ERRSegDecoder"]
