from .visualize import class_palette, draw_overlay
from .vocabulary import DuplicateClassWarning, check_vocabulary, parse_vocabulary, parse_vocabulary_text

__all__ = ["class_palette", "draw_overlay", "DuplicateClassWarning", "check_vocabulary", "parse_vocabulary",
           "parse_vocabulary_text"]
