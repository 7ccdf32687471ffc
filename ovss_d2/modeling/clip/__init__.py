"""The shared CLIP library: wrapper over open_clip, prompt templates, cached text embeddings.

Importing it registers the small open_clip model configs of ``model_configs/`` (``ovss-tiny-vit``,
``ovss-tiny-convnext``) used by tests and the built-in ToyWorld default."""
import os as _os

import open_clip as _open_clip

from . import tiny_models  # noqa: F401  (registers convnext_ovss_tiny in timm)

_open_clip.add_model_config(_os.path.join(_os.path.dirname(__file__), "model_configs"))

from .templates import IMAGENET_80, TEMPLATE_SETS, resolve_templates
from .text_embeddings import TextEmbeddingCache, default_cache_dir, split_synonyms
from .wrapper import CLIPWeightsUnavailable, CLIPWrapper, count_parameters

__all__ = [
    "CLIPWrapper", "CLIPWeightsUnavailable", "TextEmbeddingCache", "IMAGENET_80", "TEMPLATE_SETS",
    "resolve_templates", "default_cache_dir", "split_synonyms",
    "count_parameters",
]
