"""MAE-style ViT: an encoder that sees a random subset of the patches and a light decoder that
reconstructs the rest (ZeroSeg's backbone). Fixed 2-D sine-cosine position embeddings, resized
bicubically for other patch grids (inference at any size). Initialised as MAE's
(facebookresearch/mae ``models_mae.py``): linear weights xavier-uniform with zero biases, the patch
embedding's kernel xavier-uniform as a (dim, 3 * patch * patch) matrix, LayerNorms 1 / 0, the mask
token normal (std 0.02)."""
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block


def sincos_position_embedding(dim: int, grid: Sequence[int]) -> torch.Tensor:
    """(h * w, dim) fixed 2-D sine-cosine embedding: half the channels encode the row, half the
    column, each as sin / cos of the position at ``dim / 4`` geometric frequencies."""
    if dim % 4:
        raise ValueError(f"Position embedding dim {dim} must be a multiple of 4.")
    h, w = grid
    freqs = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
    rows, cols = np.meshgrid(np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64), indexing="ij")
    parts = []
    for pos in (cols.reshape(-1), rows.reshape(-1)):
        angles = pos[:, None] * freqs[None]
        parts += [np.sin(angles), np.cos(angles)]
    return torch.from_numpy(np.concatenate(parts, axis=1)).float()


def resize_position_embedding(pos: torch.Tensor, grid: Sequence[int], new_grid: Sequence[int]) -> torch.Tensor:
    """(h * w, C) -> (h' * w', C), bicubic."""
    if tuple(grid) == tuple(new_grid):
        return pos
    x = pos.reshape(1, *grid, -1).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=tuple(new_grid), mode="bicubic", align_corners=False)
    return x[0].permute(1, 2, 0).reshape(-1, pos.shape[-1])


def random_keep_indices(batch: int, length: int, mask_ratio: float, device=None) -> torch.Tensor:
    """(B, K) sorted indices of the patches the encoder sees, K = round(L * (1 - mask_ratio)),
    drawn independently per image from torch's RNG (uniform, without replacement)."""
    keep = int(round(length * (1.0 - mask_ratio)))
    if not 0 < keep <= length:
        raise ValueError(f"mask ratio {mask_ratio} keeps {keep} of {length} patches.")
    order = torch.rand(batch, length, device=device).argsort(dim=1)
    return order[:, :keep].sort(dim=1).values


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, patch * patch * C), patches in raster order, pixels (row, col, channel)."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


def gather_tokens(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """(B, L, C) tokens at (B, K) indices -> (B, K, C)."""
    return x.gather(1, index[..., None].expand(-1, -1, x.shape[-1]))


def mae_init(module: nn.Module) -> None:
    """MAE's ``_init_weights`` (for ``Module.apply``): xavier-uniform linear weights, zero biases,
    LayerNorm weight 1 and bias 0."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class MaskedViTEncoder(nn.Module):
    """ViT over the kept patches of the image.

    forward(images (B, 3, H, W), mask_ratio) -> dict with ``tokens`` (B, K, dim) of the kept patches,
    ``keep`` (B, K) their raster indices, ``grid`` (H / patch, W / patch)."""

    def __init__(self, image_size: int = 224, patch_size: int = 16, dim: int = 768, depth: int = 12,
                 num_heads: int = 12, mlp_ratio: float = 4.0):
        super().__init__()
        self.patch_size, self.dim = patch_size, dim
        self.base_grid = (image_size // patch_size, image_size // patch_size)
        self.patch_embed = nn.Conv2d(3, dim, patch_size, patch_size)
        self.register_buffer("pos_embed", sincos_position_embedding(dim, self.base_grid), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.apply(mae_init)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(dim, -1))

    def forward(self, images: torch.Tensor, mask_ratio: float = 0.0) -> Dict:
        x = self.patch_embed(images)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2) + resize_position_embedding(self.pos_embed, self.base_grid, grid)
        b, length = x.shape[:2]
        if mask_ratio > 0:
            keep = random_keep_indices(b, length, mask_ratio, x.device)
            x = gather_tokens(x, keep)
        else:
            keep = torch.arange(length, device=x.device).expand(b, -1)
        for blk in self.blocks:
            x = blk(x)
        return {"tokens": self.norm(x), "keep": keep, "grid": grid}


class MAEDecoder(nn.Module):
    """Reconstructs every patch from the kept tokens: mask tokens fill the dropped positions,
    position embeddings are added, ``depth`` blocks, a linear map to patch pixels.

    forward(tokens (B, K, in_dim), keep (B, K), grid) -> (B, L, patch * patch * 3)."""

    def __init__(self, in_dim: int = 768, dim: int = 512, depth: int = 8, num_heads: int = 16,
                 patch_size: int = 16, image_size: int = 224, mlp_ratio: float = 4.0):
        super().__init__()
        self.base_grid = (image_size // patch_size, image_size // patch_size)
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", sincos_position_embedding(dim, self.base_grid), persistent=False)
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_size * patch_size * 3)
        self.apply(mae_init)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor, grid: Tuple[int, int]) -> torch.Tensor:
        x = self.embed(tokens)
        b, length = x.shape[0], grid[0] * grid[1]
        full = self.mask_token.to(x.dtype).expand(b, length, -1).clone()
        full.scatter_(1, keep[..., None].expand(-1, -1, x.shape[-1]), x)
        x = full + resize_position_embedding(self.pos_embed, self.base_grid, grid)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))


def masked_patch_mse(pred: torch.Tensor, images: torch.Tensor, keep: torch.Tensor, patch: int,
                     norm_pix: bool = True) -> torch.Tensor:
    """MAE's loss: per-patch MSE between ``pred`` (B, L, p*p*3) and the image patches (each patch
    normalised by its own mean / variance when ``norm_pix``), averaged over the masked patches
    only (those not in ``keep``)."""
    target = patchify(images, patch)
    if norm_pix:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mean) / (var + 1e-6).sqrt()
    per_patch = (pred.float() - target).pow(2).mean(-1)  # (B, L)
    masked = torch.ones_like(per_patch).scatter_(1, keep, 0.0)
    return (per_patch * masked).sum() / masked.sum().clamp(min=1.0)
