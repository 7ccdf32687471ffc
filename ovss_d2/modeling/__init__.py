from . import converters  # noqa: F401  (registers the official-checkpoint converters)
from .clip import CLIPWrapper, TextEmbeddingCache
from .cost_map import cost_map
from .meta_arch import SED, CLIPDenseBaseline, ERRSeg, OpenVocabSegmentor
from .meta_arch import ViLSeg

__all__ = ["CLIPWrapper", "TextEmbeddingCache", "cost_map", "CLIPDenseBaseline", "OpenVocabSegmentor", "SED", "ERRSeg"]
__all__ += ["ViLSeg"]
