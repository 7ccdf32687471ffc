from .base import OpenVocabSegmentor
from .clip_baseline import CLIPDenseBaseline
from .err_seg import ERRSeg
from .sed import SED
from .vil_seg import ViLSeg
from .zeroseg import ZeroSeg

__all__ = ["OpenVocabSegmentor", "CLIPDenseBaseline", "SED", "ERRSeg", "ZeroSeg", "ViLSeg"]
