"""Decoder blocks of the cost-aggregation methods.

Tensors carry the class axis folded into the batch: ``(B*N, C, H, W)`` for per-class maps, so
every spatial operation runs on all classes at once; class-level operations unfold it to
``(B, N, ...)``.
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..fast_paths import chunked_over_classes


class CostEmbedding(nn.Module):
    """Cost map (B, P, N, h, w) -> per-class embedding (B*N, C, h, w) with one convolution over
    the template axis (SED: 7x7, P -> 128)."""

    def __init__(self, num_templates: int, dim: int, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(num_templates, dim, kernel_size, padding=kernel_size // 2)

    def forward(self, cost: torch.Tensor) -> torch.Tensor:
        b, p, n, h, w = cost.shape
        return self.embed_rows(cost.transpose(1, 2).reshape(b * n, p, h, w))

    def embed_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The cost map already folded per class: (B*N, P, h, w) -> (B*N, C, h, w)."""
        return self.conv(rows)


class ConvNeXtBlock(nn.Module):
    """Spatial fusion: depth-wise k x k conv, LayerNorm, MLP (GELU) with layer scale, residual.

    (M, C, H, W) -> (M, C, H, W)."""

    def __init__(self, dim: int, kernel_size: int = 9, layer_scale_init: float = 1.0, mlp_ratio: int = 4):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, mlp_ratio * dim)
        self.pwconv2 = nn.Linear(mlp_ratio * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), float(layer_scale_init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(F.gelu(self.pwconv1(self.norm(y))))
        return x + (self.gamma * y).permute(0, 3, 1, 2)


def linear_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Linear attention with the elu(x) + 1 feature map ("Transformers are RNNs").

    q: (M, L, H, D), k and v: (M, S, H, D) -> (M, L, H, D). Cost O(L + S) instead of O(L * S)."""
    q = F.elu(q) + 1
    k = F.elu(k) + 1
    s = v.shape[1]
    kv = torch.einsum("mshd,mshe->mhde", k, v / s)  # values scaled down against fp16 overflow
    z = 1.0 / (torch.einsum("mlhd,mhd->mlh", q, k.sum(dim=1)) + eps)
    return torch.einsum("mlhd,mhde,mlh->mlhe", q, kv, z) * s


class ClassLinearAttention(nn.Module):
    """Class fusion: at every (pooled) pixel, linear attention across the N classes, then an MLP,
    both pre-norm residual; the update is computed on a ``pool``-average-pooled grid (``test_pool``
    at inference when given) and upsampled back (bilinear, corners aligned) as a residual.

    (B*N, C, H, W) with ``num_classes`` N -> same shape."""

    def __init__(self, dim: int, num_heads: int = 4, pool: Sequence[int] = (2, 2), mlp_ratio: int = 4,
                 test_pool: Optional[Sequence[int]] = None):
        super().__init__()
        self.num_heads = num_heads
        self.pool = tuple(pool)
        self.test_pool = tuple(test_pool) if test_pool else self.pool
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.ReLU(), nn.Linear(dim * mlp_ratio, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, num_classes: int) -> torch.Tensor:
        bn, c, h, w = x.shape
        b, n = bn // num_classes, num_classes
        pooled = F.avg_pool2d(x, self.pool if self.training else self.test_pool)
        hp, wp = pooled.shape[-2:]
        t = pooled.view(b, n, c, hp, wp).permute(0, 3, 4, 1, 2).reshape(b * hp * wp, n, c)
        y = self.norm1(t)
        heads = lambda z: z.view(z.shape[0], n, self.num_heads, c // self.num_heads)  # noqa: E731
        t = t + linear_attention(heads(self.q(y)), heads(self.k(y)), heads(self.v(y))).reshape(-1, n, c)
        t = t + self.mlp(self.norm2(t))
        t = t.view(b, hp, wp, n, c).permute(0, 3, 4, 1, 2).reshape(bn, c, hp, wp)
        return x + F.interpolate(t, size=(h, w), mode="bilinear", align_corners=True)


class DoubleConv(nn.Module):
    """(3x3 conv, GroupNorm(C/16), ReLU) x 2. (M, C_in, H, W) -> (M, C_out, H, W)."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_dim, out_dim, 3, padding=1, bias=False), nn.GroupNorm(out_dim // 16, out_dim),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_dim, out_dim, 3, padding=1, bias=False), nn.GroupNorm(out_dim // 16, out_dim),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.convs(x)


class GradualFusionLayer(nn.Module):
    """One layer of SED's gradual fusion decoder.

    Feature aggregation (FAM): spatial ConvNeXt block, then linear attention across classes.
    Skip-layer fusion (SFM): 2x transposed-conv upsampling to ``in_dim - guidance_dim`` channels,
    concatenated with the channel-reduced encoder feature of that scale (repeated per class) and
    the upsampled cost map, then two convolutions.

    x: (B*N, in_dim, H, W); guidance: (B, guidance_dim, 2H, 2W); cost_guidance:
    (B*N, guidance_dim, 2H, 2W) -> (B*N, out_dim, 2H, 2W). With ``class_chunk`` > 0 the per-class
    parts (spatial block, SFM) run that many classes at a time (less memory, same result).
    """

    def __init__(self, in_dim: int, out_dim: int, guidance_dim: int, kernel_size: int = 9, num_heads: int = 4,
                 pool: Sequence[int] = (2, 2), layer_scale_init: float = 1.0,
                 test_pool: Optional[Sequence[int]] = None):
        super().__init__()
        self.spatial = ConvNeXtBlock(in_dim, kernel_size, layer_scale_init)
        self.class_attn = ClassLinearAttention(in_dim, num_heads, pool, test_pool=test_pool)
        self.up = nn.ConvTranspose2d(in_dim, in_dim - guidance_dim, kernel_size=2, stride=2)
        self.fuse = DoubleConv(in_dim + guidance_dim, out_dim)

    def forward(self, x: torch.Tensor, num_classes: int, guidance: Optional[torch.Tensor],
                cost_guidance: Optional[torch.Tensor], class_chunk: int = 0) -> torch.Tensor:
        x = self.class_attn(chunked_over_classes(self.spatial, x, num_classes, class_chunk), num_classes)

        def skip_fusion(rows: torch.Tensor, *cost_rows: torch.Tensor) -> torch.Tensor:
            parts = [self.up(rows)]
            if guidance is not None:  # the image's feature, repeated for each of its classes
                parts.append(guidance.repeat_interleave(rows.shape[0] // guidance.shape[0], dim=0))
            return self.fuse(torch.cat(parts + list(cost_rows), dim=1))

        cost_rows = () if cost_guidance is None else (cost_guidance,)
        return chunked_over_classes(skip_fusion, x, num_classes, class_chunk, *cost_rows)
