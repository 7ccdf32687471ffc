"""Sliding-window inference as mmsegmentation's ``slide`` test mode, which GroupViT's evaluation
(and so ZeroSeg's, §4.2) uses: windows of ``crop`` pixels every ``stride`` pixels, the last row and
column of windows moved back inside the image, the scores of each pixel averaged over the windows
that contain it."""
from typing import Callable, List, Tuple

import torch

Box = Tuple[int, int, int, int]  # y0, y1, x0, x1 (end exclusive)


def sliding_window_boxes(height: int, width: int, crop: int, stride: int) -> List[Box]:
    """Windows over a (height, width) image in raster order: ``ceil((size - crop) / stride) + 1``
    starts per axis (one when the image is not larger than ``crop``), at multiples of ``stride``,
    each window ``crop`` long but shifted back to end at the border when it would cross it, and
    cut to the image where the image is shorter than ``crop``."""
    if crop <= 0 or stride <= 0:
        raise ValueError(f"Sliding windows need a positive crop and stride, got crop {crop}, stride {stride}.")

    def starts(size: int) -> List[Tuple[int, int]]:
        count = max(size - crop + stride - 1, 0) // stride + 1
        spans = []
        for i in range(count):
            end = min(i * stride + crop, size)
            spans.append((max(end - crop, 0), end))
        return spans

    return [(y0, y1, x0, x1) for y0, y1 in starts(height) for x0, x1 in starts(width)]


def sliding_window_scores(image: torch.Tensor, crop: int, stride: int,
                          predict: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """(C, H, W) image -> (N, H, W): ``predict`` ((C, h, w) window -> (N, h, w) scores) on every
    window of :func:`sliding_window_boxes`, each pixel's scores averaged over its windows."""
    height, width = image.shape[-2:]
    total = count = None
    for y0, y1, x0, x1 in sliding_window_boxes(height, width, crop, stride):
        scores = predict(image[:, y0:y1, x0:x1])
        if total is None:
            total = scores.new_zeros(scores.shape[0], height, width)
            count = scores.new_zeros(1, height, width)
        total[:, y0:y1, x0:x1] += scores
        count[:, y0:y1, x0:x1] += 1
    return total / count
