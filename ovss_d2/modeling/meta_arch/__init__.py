from .base import OpenVocabSegmentor
from .clip_baseline import CLIPDenseBaseline
from .sed import SED

__all__ = ["OpenVocabSegmentor", "CLIPDenseBaseline", "SED"]
