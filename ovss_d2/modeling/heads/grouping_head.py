"""ZeroSeg's segmentation head: transformer layers with two grouping stages that merge the image
tokens into a few segment tokens, a projector into the teacher's embedding space, and the global
branch (one transformer layer over the segments, average pool, the same projector)."""
from typing import Dict, Sequence

import torch
import torch.nn as nn
from timm.layers import Mlp
from timm.models.vision_transformer import Block

from ..grouping import GroupingBlock, TokenMixer


class GroupingSegmentationHead(nn.Module):
    """Image tokens (B, L, in_dim) -> segment embeddings (B, G, out_dim), global embedding
    (B, out_dim) and the per-stage hard assignments [(B, G1, L), (B, G2, G1)].

    Stage ``i`` runs ``depths[i]`` transformer layers over [its group tokens; the current tokens],
    then a :class:`GroupingBlock` merges the tokens into ``num_group_tokens[i]`` segments; the last
    ``depths[-1]`` layers run over the final segments (ZeroSeg: depths 2, 2, 1 with 32 then 8
    groups). A later stage's group tokens also receive a token-mixing projection of the previous
    stage's segments (as in GroupViT).
    """

    def __init__(self, in_dim: int = 768, dim: int = 512, num_heads: int = 8, depths: Sequence[int] = (2, 2, 1),
                 num_group_tokens: Sequence[int] = (32, 8), out_dim: int = 768, mlp_ratio: float = 4.0,
                 projector_hidden: int = 2048, gumbel: bool = True):
        super().__init__()
        if len(depths) != len(num_group_tokens) + 1:
            raise ValueError(f"depths {list(depths)} needs one entry per grouping stage plus the final layers "
                             f"(grouping stages: {list(num_group_tokens)}).")
        self.num_group_tokens = list(num_group_tokens)
        self.input_proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, dim))
        self.group_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, g, dim)) for g in num_group_tokens)
        for t in self.group_tokens:
            nn.init.trunc_normal_(t, std=0.02)
        self.stages = nn.ModuleList(
            nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(d)) for d in depths)
        self.grouping = nn.ModuleList(
            GroupingBlock(dim, num_heads, g, g, gumbel=gumbel) for g in num_group_tokens)
        self.carry = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), TokenMixer(prev, nxt, dim // 2))
            for prev, nxt in zip(num_group_tokens[:-1], num_group_tokens[1:]))
        self.norm = nn.LayerNorm(dim)
        self.global_layer = Block(dim, num_heads, mlp_ratio, qkv_bias=True)
        self.global_norm = nn.LayerNorm(dim)
        self.projector = Mlp(dim, projector_hidden, out_dim)

    def forward(self, tokens: torch.Tensor) -> Dict:
        x = self.input_proj(tokens)
        b = x.shape[0]
        assignments = []
        for i, grouping in enumerate(self.grouping):
            group = self.group_tokens[i].expand(b, -1, -1)
            if i > 0:
                group = group + self.carry[i - 1](x)
            y = torch.cat([group, x], dim=1)
            for blk in self.stages[i]:
                y = blk(y)
            group, x = y[:, :group.shape[1]], y[:, group.shape[1]:]
            x, assignment = grouping(x, group)
            assignments.append(assignment)
        for blk in self.stages[-1]:
            x = blk(x)
        x = self.norm(x)
        pooled = self.global_norm(self.global_layer(x)).mean(dim=1)
        return {"segments": self.projector(x), "global": self.projector(pooled), "assignments": assignments}

