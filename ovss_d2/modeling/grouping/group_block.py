"""GroupViT-style grouping: learnable group tokens gather image tokens by a hard (straight-through)
assignment, merging L tokens into G segment tokens (ZeroSeg's segmentation head).

Shapes: image tokens ``x`` (B, L, C), group tokens (B, S, C), output segments (B, G, C),
assignment (B, G, L) with every column one-hot in the forward pass (each token belongs to exactly
one group) and the soft assignment's gradient in the backward pass.
"""
from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import Mlp


def straight_through_assign(logits: torch.Tensor, dim: int, gumbel: bool = False, tau: float = 1.0) -> torch.Tensor:
    """One-hot of the argmax along ``dim`` in the forward pass, the gradient of the softmax in the
    backward pass; ``gumbel`` perturbs the logits with Gumbel(0, 1) noise first (training)."""
    if gumbel:
        u = torch.rand_like(logits).clamp_(1e-10, 1.0 - 1e-7)
        logits = logits - torch.log(-torch.log(u))
    soft = (logits / tau).softmax(dim)
    hard = torch.zeros_like(soft).scatter_(dim, soft.argmax(dim, keepdim=True), 1.0)
    return hard - soft.detach() + soft


class TokenMixer(nn.Module):
    """(B, S, C) -> (B, G, C): an MLP across the token axis (S -> hidden -> G)."""

    def __init__(self, tokens_in: int, tokens_out: int, hidden: int):
        super().__init__()
        self.mlp = Mlp(tokens_in, hidden, tokens_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x.transpose(1, 2)).transpose(1, 2)


class CrossAttentionBlock(nn.Module):
    """Queries attend to keys (pre-assignment refinement of the group tokens): attention + MLP,
    both residual, LayerNorm after (GroupViT's post-norm variant)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        x = query + self.attn(query, key, key, need_weights=False)[0]
        x = x + self.mlp(self.norm_mlp(x))
        return self.norm_out(x)


class AssignAttention(nn.Module):
    """Single-head assignment of L tokens to G groups: logits (B, G, L) = q k^T / sqrt(C), a hard
    assignment over the group axis, then each group takes the assignment-weighted mean of the
    values (normalised by its token count + ``eps``, so empty groups stay finite)."""

    def __init__(self, dim: int, gumbel: bool = True, tau: float = 1.0, eps: float = 1.0):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.scale = dim ** -0.5
        self.gumbel, self.tau, self.eps = gumbel, tau, eps

    def forward(self, groups: torch.Tensor, x: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        logits = self.q(groups) @ self.k(x).transpose(1, 2) * self.scale  # (B, G, L)
        hard = straight_through_assign(logits, dim=1, gumbel=self.gumbel and self.training, tau=self.tau)
        weights = hard / (hard.sum(dim=-1, keepdim=True) + self.eps)
        out = self.proj(weights @ self.v(x))
        return out, {"hard": hard, "soft": logits.softmax(dim=1)}


class GroupingBlock(nn.Module):
    """Merges image tokens (B, L, C) into ``num_output_groups`` segment tokens given ``num_group_tokens``
    group tokens (B, S, C): an MLP across the token axis maps S -> G tokens, they attend to the image
    tokens, then assign them (:class:`AssignAttention`); MLP on the channels, residual.

    Returns the segments (B, G, out_dim) and the assignment dict ``hard``/``soft`` (B, G, L).
    """

    def __init__(self, dim: int, num_heads: int, num_group_tokens: int, num_output_groups: int,
                 out_dim: Optional[int] = None, token_mlp_ratio: float = 0.5, channel_mlp_ratio: float = 4.0,
                 gumbel: bool = True):
        super().__init__()
        out_dim = out_dim or dim
        self.norm_tokens = nn.LayerNorm(dim)
        self.token_mlp = TokenMixer(num_group_tokens, num_output_groups, int(dim * token_mlp_ratio))
        self.norm_projected = nn.LayerNorm(dim)
        self.norm_x = nn.LayerNorm(dim)
        self.pre_assign = CrossAttentionBlock(dim, num_heads)
        self.assign = AssignAttention(dim, gumbel=gumbel)
        self.norm_new = nn.LayerNorm(dim)
        self.channel_mlp = Mlp(dim, int(dim * channel_mlp_ratio), out_dim)
        self.reduction = nn.Identity() if out_dim == dim else nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, out_dim, bias=False))

    def forward(self, x: torch.Tensor, group_tokens: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        x = self.norm_x(x)
        groups = self.token_mlp(self.norm_tokens(group_tokens))
        groups = self.pre_assign(self.norm_projected(groups), x)
        assigned, assignment = self.assign(groups, x)
        new = assigned + groups
        return self.reduction(new) + self.channel_mlp(self.norm_new(new)), assignment


def compose_assignments(assignments) -> torch.Tensor:
    """Chains per-stage assignments [(B, G1, L), (B, G2, G1), ...] into (B, G_last, L): which final
    group each input token belongs to (hard inputs give one-hot columns)."""
    total = assignments[0]
    for a in assignments[1:]:
        total = a @ total
    return total


def assignment_to_pixels(assignment: torch.Tensor, grid, size) -> torch.Tensor:
    """(B, G, h*w) token-to-group assignment -> (B, H, W) int64 group index of every pixel:
    bilinear upsampling of the (soft) maps to ``size``, then the argmax (one group per pixel)."""
    b, g, _ = assignment.shape
    maps = F.interpolate(assignment.reshape(b, g, *grid).float(), size=tuple(size), mode="bilinear",
                         align_corners=False)
    return maps.argmax(dim=1)
