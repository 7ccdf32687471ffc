from .visualize import class_palette, draw_overlay

__all__ = ["class_palette", "draw_overlay"]
