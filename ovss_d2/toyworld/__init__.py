"""ToyWorld: a small built-in open-vocabulary world (textured stuff + coloured shapes, with
held-out unseen classes and a wider cross-dataset vocabulary) where every method can be trained
and tested on a CPU, and the tiny CLIP trained on it.

A package on top of the library: it imports ``ovss_d2.data`` and ``ovss_d2.modeling``, never the
other way round. Importing it (``import ovss_d2`` does) adds its datasets to the built-in ones
(``toyworld_*``, :mod:`.datasets`) and registers the CLIP weights tag ``toyworld``
(``MODEL.CLIP.PRETRAINED toyworld``: the cached tiny CLIP of :mod:`.tiny_clip`).

Modules: :mod:`.vocabulary` (classes, held-out pairs), :mod:`.generator` (scenes, captions, the
cached world), :mod:`.datasets` (detectron2 registration), :mod:`.tiny_clip` (corpus, training,
evaluation).
"""
from ..data.datasets import add_builtin_datasets
from ..modeling.clip import register_weights_tag
from . import tiny_clip
from .datasets import register_toyworld
from .generator import GENERATOR_VERSION, SPLITS, default_root, generate, is_generated, read_annotations, render_scene
from .vocabulary import (HELD_OUT, STUFF, TRAIN_CLASSES, VAL_CLASSES, VAL_UNSEEN, WIDE_CLASSES, WIDE_UNSEEN,
                         check_vocabulary, is_object)

TINY_CLIP_MISSING = ("no ToyWorld-trained {name} at {path}. Train it with `python tools/train_tiny_clip.py "
                     "--model {name}` (or `make quickstart`), or pass a file.")

add_builtin_datasets("toyworld", register_toyworld)
register_weights_tag("toyworld", tiny_clip.default_checkpoint_path, TINY_CLIP_MISSING)

__all__ = [
    "GENERATOR_VERSION", "SPLITS", "default_root", "generate", "is_generated", "read_annotations", "render_scene",
    "register_toyworld", "HELD_OUT", "STUFF", "TRAIN_CLASSES", "VAL_CLASSES", "VAL_UNSEEN", "WIDE_CLASSES",
    "WIDE_UNSEEN", "check_vocabulary", "is_object", "tiny_clip", "TINY_CLIP_MISSING",
]
