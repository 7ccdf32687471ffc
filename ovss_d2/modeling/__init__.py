from .clip import CLIPWrapper, TextEmbeddingCache
from .cost_map import cost_map
from .meta_arch import CLIPDenseBaseline, OpenVocabSegmentor

__all__ = ["CLIPWrapper", "TextEmbeddingCache", "cost_map", "CLIPDenseBaseline", "OpenVocabSegmentor"]
