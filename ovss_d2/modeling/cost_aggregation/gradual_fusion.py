"""SED's gradual fusion decoder layer: feature aggregation (a ConvNeXt block per class, linear
attention across classes) and skip-layer fusion.

Tensors carry the class axis folded into the batch: ``(B*N, C, H, W)`` for per-class maps, so
every spatial operation runs on all classes at once; class-level operations unfold it to
``(B, N, ...)``.
"""
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .class_chunks import chunked_over_classes
from .class_mixer import PooledClassMixer
from .guided_upsampling import GuidedUpsampling


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
    """SED's class-token block: linear attention across the N classes, then an MLP (ReLU), both
    pre-norm residual. (M, N, C) -> (M, N, C); run on pooled cells by :class:`PooledClassMixer`."""

    def __init__(self, dim: int, num_heads: int = 4, mlp_ratio: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.ReLU(), nn.Linear(dim * mlp_ratio, dim))
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        m, n, c = t.shape
        y = self.norm1(t)
        q, k, v = (proj(y).view(m, n, self.num_heads, c // self.num_heads) for proj in (self.q, self.k, self.v))
        t = t + linear_attention(q, k, v).reshape(m, n, c)
        return t + self.mlp(self.norm2(t))


class GradualFusionLayer(nn.Module):
    """One layer of SED's gradual fusion decoder.

    Feature aggregation (FAM): spatial ConvNeXt block, then linear attention across classes on a
    ``pool``-pooled grid (``test_pool`` at inference when given). Skip-layer fusion (SFM): 2x
    transposed-conv upsampling to ``in_dim - guidance_dim`` channels, concatenated with the
    channel-reduced encoder feature of that scale (repeated per class) and the upsampled cost map,
    then two convolutions.

    x: (B*N, in_dim, H, W); guidance: (B, guidance_dim, 2H, 2W); cost_guidance:
    (B*N, guidance_dim, 2H, 2W) -> (B*N, out_dim, 2H, 2W). With ``class_chunk`` > 0 the per-class
    parts (spatial block, SFM) run that many classes at a time (less memory, same result).
    """

    def __init__(self, in_dim: int, out_dim: int, guidance_dim: int, kernel_size: int = 9, num_heads: int = 4,
                 pool: Sequence[int] = (2, 2), layer_scale_init: float = 1.0,
                 test_pool: Optional[Sequence[int]] = None):
        super().__init__()
        self.spatial = ConvNeXtBlock(in_dim, kernel_size, layer_scale_init)
        self.class_attn = PooledClassMixer(ClassLinearAttention(in_dim, num_heads), pool, test_pool)
        self.skip_fusion = GuidedUpsampling(in_dim, in_dim - guidance_dim, 2 * guidance_dim, out_dim,
                                            group_channels=16)

    def forward(self, x: torch.Tensor, num_classes: int, guidance: torch.Tensor, cost_guidance: torch.Tensor,
                class_chunk: int = 0) -> torch.Tensor:
        x = self.class_attn(chunked_over_classes(self.spatial, x, num_classes, class_chunk), num_classes)
        return chunked_over_classes(lambda rows, cost_rows: self.skip_fusion(rows, guidance, cost_rows),
                                    x, num_classes, class_chunk, cost_guidance)
