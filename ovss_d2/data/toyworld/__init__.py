"""ToyWorld: a small built-in open-vocabulary world (textured stuff + coloured shapes, with
held-out unseen classes) where every method can be trained and tested on a CPU."""
from .generator import GENERATOR_VERSION, default_root, generate, is_generated, read_annotations, render_scene
from .register import register_toyworld
from .vocabulary import ALL_CLASSES, OBJECTS, SEEN_CLASSES, STUFF, UNSEEN_CLASSES, check_vocabulary

__all__ = [
    "GENERATOR_VERSION", "default_root", "generate", "is_generated", "read_annotations", "render_scene",
    "register_toyworld", "ALL_CLASSES", "OBJECTS", "SEEN_CLASSES", "STUFF", "UNSEEN_CLASSES",
    "check_vocabulary",
]
