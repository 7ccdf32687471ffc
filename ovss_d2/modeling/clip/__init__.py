"""The shared CLIP library: wrapper over open_clip, where its weights come from (weights tags,
open_clip tags, local files), prompt templates, cached text embeddings.

Importing it registers the small open_clip model configs of ``model_configs/`` (``ovss-tiny-vit``,
``ovss-tiny-convnext``) used by tests and the built-in ToyWorld default."""
import os as _os

import open_clip as _open_clip

from . import tiny_models  # noqa: F401  (registers convnext_ovss_tiny in timm)

_open_clip.add_model_config(_os.path.join(_os.path.dirname(__file__), "model_configs"))

from .templates import IMAGENET_80, TEMPLATE_SETS, resolve_templates
from .text_embeddings import TextEmbeddingCache, default_cache_dir, split_synonyms
from .weights import (NO_WEIGHTS, CLIPWeightsUnavailable, is_weights_tag, register_weights_tag,
                      resolve_clip_weights, weights_tag_file)
from .wrapper import CLIPWrapper, count_parameters

__all__ = [
    "CLIPWrapper", "CLIPWeightsUnavailable", "TextEmbeddingCache", "IMAGENET_80", "TEMPLATE_SETS",
    "resolve_templates", "default_cache_dir", "split_synonyms",
    "count_parameters", "NO_WEIGHTS", "register_weights_tag", "is_weights_tag", "weights_tag_file",
    "resolve_clip_weights",
]
