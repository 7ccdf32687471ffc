"""Drawing segmentation results: a blended overlay with a legend of the classes present."""
from typing import Dict, List, Sequence

import cv2
import numpy as np


def class_palette(num_classes: int, seed: int = 7) -> np.ndarray:
    """(num_classes, 3) uint8 distinct, deterministic colours."""
    rng = np.random.default_rng(seed)
    hues = (np.arange(num_classes) * 0.618034 + rng.random()) % 1.0
    hsv = np.stack([hues * 179, np.full(num_classes, 200), np.full(num_classes, 230)], 1).astype(np.uint8)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2RGB)[0]


def class_fractions(label: np.ndarray, class_names: Sequence[str]) -> Dict[str, float]:
    """Fraction of the pixels of each class present, largest first."""
    counts = np.bincount(label.reshape(-1), minlength=len(class_names))
    order = np.argsort(-counts, kind="stable")
    return {class_names[i]: float(counts[i] / label.size) for i in order if counts[i] > 0}


def draw_overlay(image: np.ndarray, label: np.ndarray, class_names: Sequence[str], alpha: float = 0.55,
                 palette: np.ndarray = None, fixed_size: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 RGB image + (H, W) class ids -> RGB overlay with a legend panel on the right
    listing the classes present (largest first) with their pixel share. ``fixed_size``: size the
    panel for the whole vocabulary, so every frame of a video gets the same canvas size."""
    palette = class_palette(len(class_names)) if palette is None else palette
    blend = (image.astype(np.float32) * (1 - alpha) + palette[label].astype(np.float32) * alpha).astype(np.uint8)
    present: List = list(class_fractions(label, class_names).items())
    h = blend.shape[0]
    scale = max(0.35, min(1.0, h / 600))
    row = int(22 * scale) + 4
    listed = [(n, 1.0) for n in class_names] if fixed_size else present
    width = int(max([cv2.getTextSize(f"{n} {f:.0%}", cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0]
                     for n, f in listed] + [40])) + row + 12
    panel = np.full((max(h, row * len(listed) + 8), width, 3), 255, np.uint8)
    for i, (name, frac) in enumerate(present):
        y = 4 + i * row
        color = tuple(int(c) for c in palette[list(class_names).index(name)])
        cv2.rectangle(panel, (4, y), (4 + row - 6, y + row - 6), color, -1)
        cv2.putText(panel, f"{name} {frac:.0%}", (row + 4, y + row - 9), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (0, 0, 0), 1, cv2.LINE_AA)
    canvas = np.full((panel.shape[0], blend.shape[1] + width, 3), 255, np.uint8)
    canvas[:h, :blend.shape[1]] = blend
    canvas[:, blend.shape[1]:] = panel
    return canvas
