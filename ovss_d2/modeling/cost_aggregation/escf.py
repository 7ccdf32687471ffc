"""ERR-Seg's efficient spatial and class fusion (ESCF): the aggregator layers of its decoder.

Per-class maps carry the class axis folded into the batch, ``(B*K, C, H, W)``."""
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath

from .class_chunks import chunked_over_classes
from .class_mixer import PooledClassMixer


class StarMlp(nn.Module):
    """"Star" MLP: relu6(fc1(x)) * fc2(x) -> fc3, then a 7x7 depth-wise conv over the token grid
    (spatial fusion) or a ReLU6 (class fusion). (M, L, C) -> (M, L, C)."""

    def __init__(self, dim: int, hidden: int, spatial: bool):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(dim, hidden)
        self.fc3 = nn.Linear(hidden, dim)
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim) if spatial else None

    def forward(self, x: torch.Tensor, hw=None) -> torch.Tensor:
        x = self.fc3(F.relu6(self.fc1(x)) * self.fc2(x))
        if self.dwconv is None:
            return F.relu6(x)
        m, _, c = x.shape
        y = self.dwconv(x.transpose(1, 2).reshape(m, c, *hw))
        return y.flatten(2).transpose(1, 2)


class GuidedAttention(nn.Module):
    """Multi-head attention whose queries and keys see the input concatenated with a guidance
    feature and whose values see the input alone; with ``sr_ratio`` > 1, keys and values come from
    a ``sr_ratio`` x ``sr_ratio`` strided-conv reduction of the token grid (spatial sequence
    reduction). x, guidance: (M, L, C) -> (M, L, C)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 1):
        super().__init__()
        self.num_heads, self.sr_ratio = num_heads, sr_ratio
        self.q = nn.Linear(2 * dim, dim)
        self.k = nn.Linear(2 * dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr_k = nn.Conv2d(2 * dim, 2 * dim, sr_ratio, stride=sr_ratio)
            self.norm_k = nn.LayerNorm(2 * dim)
            self.sr_v = nn.Conv2d(dim, dim, sr_ratio, stride=sr_ratio)
            self.norm_v = nn.LayerNorm(dim)

    def _reduce(self, t: torch.Tensor, conv: nn.Conv2d, norm: nn.LayerNorm, hw) -> torch.Tensor:
        m, _, c = t.shape
        return norm(conv(t.transpose(1, 2).reshape(m, c, *hw)).flatten(2).transpose(1, 2))

    def forward(self, x: torch.Tensor, guidance: torch.Tensor, hw=None) -> torch.Tensor:
        m, n, c = x.shape
        xg = torch.cat([x, guidance], dim=-1)
        kv_in, v_in = xg, x
        if self.sr_ratio > 1:
            kv_in = self._reduce(xg, self.sr_k, self.norm_k, hw)
            v_in = self._reduce(x, self.sr_v, self.norm_v, hw)

        def heads(t):
            return t.view(m, -1, self.num_heads, c // self.num_heads).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(self.q(xg)), heads(self.k(kv_in)), heads(self.v(v_in)))
        return self.proj(out.transpose(1, 2).reshape(m, n, c))


class FusionBlock(nn.Module):
    """Pre-norm transformer block: guided attention + star MLP, both residual (stochastic depth)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int = 1, spatial: bool = True, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attention = GuidedAttention(dim, num_heads, sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = StarMlp(dim, 3 * dim, spatial)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, guidance: torch.Tensor, hw=None) -> torch.Tensor:
        x = x + self.drop_path(self.attention(self.norm1(x), guidance, hw))
        return x + self.drop_path(self.mlp(self.norm2(x), hw))


class SpatialFusion(nn.Module):
    """Spatial fusion of every class map with the image guidance (sequence reduction ``sr_ratio``).
    x: (B*K, C, H, W), guidance: (B, C, H, W) -> (B*K, C, H, W)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, drop_path: float = 0.0):
        super().__init__()
        self.block = FusionBlock(dim, num_heads, sr_ratio, spatial=True, drop_path=drop_path)

    def forward(self, x: torch.Tensor, guidance: torch.Tensor) -> torch.Tensor:
        bk, c, h, w = x.shape
        g = guidance.repeat_interleave(bk // guidance.shape[0], dim=0)
        y = self.block(x.flatten(2).transpose(1, 2), g.flatten(2).transpose(1, 2), (h, w))
        return y.transpose(1, 2).reshape(bk, c, h, w)


class ESCFLayer(nn.Module):
    """One aggregator layer: spatial fusion of every class map with the image guidance (per class;
    ``class_chunk`` classes at a time when > 0), then class fusion with the text guidance on a
    ``pool``-pooled grid (:class:`PooledClassMixer`).

    x: (B*K, C, H, W), image guidance: (B, C, H, W), text guidance: (B, K, C) -> (B*K, C, H, W)."""

    def __init__(self, dim: int, num_heads: int, sr_ratio: int, drop_path: float, pool: Sequence[int]):
        super().__init__()
        self.spatial = SpatialFusion(dim, num_heads, sr_ratio, drop_path)
        self.klass = PooledClassMixer(FusionBlock(dim, num_heads, sr_ratio=1, spatial=False, drop_path=drop_path),
                                      pool)

    def forward(self, x: torch.Tensor, image_guidance: torch.Tensor, text_guidance: torch.Tensor,
                class_chunk: int = 0) -> torch.Tensor:
        k = text_guidance.shape[1]
        x = chunked_over_classes(lambda rows: self.spatial(rows, image_guidance), x, k, class_chunk)
        return self.klass(x, k, text_guidance)
