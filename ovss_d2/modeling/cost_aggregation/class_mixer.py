"""The class-fusion step of SED and ERR-Seg: at every cell of a pooled grid, a block that mixes
the N class features, its result upsampled back as a residual."""
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class PooledClassMixer(nn.Module):
    """Average-pools the per-class maps by ``pool`` (``test_pool`` at inference when given), runs
    ``block`` on the N class tokens of every pooled cell, and adds its output, upsampled (bilinear,
    corners aligned), to the input.

    ``block``: (M, N, C) tokens [, (M, N, G) guidance] -> (M, N, C), M = B x pooled cells (SED: linear
    attention and an MLP; ERR-Seg: guided attention and a star MLP)."""

    def __init__(self, block: nn.Module, pool: Sequence[int] = (2, 2), test_pool: Optional[Sequence[int]] = None):
        super().__init__()
        self.block = block
        self.pool = tuple(pool)
        self.test_pool = tuple(test_pool) if test_pool else self.pool

    def forward(self, x: torch.Tensor, num_classes: int, guidance: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: (B*N, C, H, W), rows image-major; guidance: (B, N, G) per image and class, or None
        -> (B*N, C, H, W)."""
        bn, c, h, w = x.shape
        b, n = bn // num_classes, num_classes
        pooled = F.avg_pool2d(x, self.pool if self.training else self.test_pool)
        hp, wp = pooled.shape[-2:]
        tokens = pooled.view(b, n, c, hp, wp).permute(0, 3, 4, 1, 2).reshape(b * hp * wp, n, c)
        if guidance is None:
            tokens = self.block(tokens)
        else:  # the same guidance at every cell of an image
            tokens = self.block(tokens, guidance.repeat_interleave(hp * wp, dim=0))
        t = tokens.view(b, hp, wp, n, c).permute(0, 3, 4, 1, 2).reshape(bn, c, hp, wp)
        return x + F.interpolate(t, size=(h, w), mode="bilinear", align_corners=True)
