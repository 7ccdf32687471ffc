from .base import OpenVocabSegmentor
from .clip_baseline import CLIPDenseBaseline

__all__ = ["OpenVocabSegmentor", "CLIPDenseBaseline"]
