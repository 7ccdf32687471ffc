from .base import OpenVocabSegmentor
from .clip_baseline import CLIPDenseBaseline
from .err_seg import ERRSeg
from .sed import SED

__all__ = ["OpenVocabSegmentor", "CLIPDenseBaseline", "SED", "ERRSeg"]
