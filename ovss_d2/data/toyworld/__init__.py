"""ToyWorld: a small built-in open-vocabulary world (textured stuff + coloured shapes, with
held-out unseen classes and a wider cross-dataset vocabulary) where every method can be trained
and tested on a CPU."""
from .generator import GENERATOR_VERSION, SPLITS, default_root, generate, is_generated, read_annotations, render_scene
from .register import register_toyworld
from .vocabulary import (HELD_OUT, STUFF, TRAIN_CLASSES, VAL_CLASSES, VAL_UNSEEN, WIDE_CLASSES, WIDE_UNSEEN,
                         check_vocabulary, is_object)

__all__ = [
    "GENERATOR_VERSION", "SPLITS", "default_root", "generate", "is_generated", "read_annotations", "render_scene",
    "register_toyworld", "HELD_OUT", "STUFF", "TRAIN_CLASSES", "VAL_CLASSES", "VAL_UNSEEN", "WIDE_CLASSES",
    "WIDE_UNSEEN", "check_vocabulary", "is_object",
]
