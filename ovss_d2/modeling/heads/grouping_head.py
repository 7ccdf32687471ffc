"""ZeroSeg's segmentation head: transformer layers with two grouping stages that merge the image
tokens into a few segment tokens, a projector into the teacher's embedding space, and the global
branch (average pool of the segments, after one more transformer layer of their own unless
``global_layer`` is off, and the same projector). Initialised as GroupViT's (NVlabs/GroupViT
``models/group_vit.py``): linear weights truncated normal (std 0.02), biases 0, LayerNorms 1 / 0,
the first stage's group tokens truncated normal (std 0.02), a later stage's zeros (its tokens start
as the projection of the previous stage's); ``init="torch"`` keeps PyTorch's default init of the
linears and norms (the group tokens as above)."""
from typing import Dict, Sequence

import torch
import torch.nn as nn
from timm.layers import Mlp
from timm.models.vision_transformer import Block

from ..grouping import GroupingBlock, TokenMixer


HEAD_INITS = ("groupvit", "torch")  # GroupViT's init of the linears and norms, or PyTorch's defaults


class GroupingSegmentationHead(nn.Module):
    """Image tokens (B, L, in_dim) -> segment embeddings (B, G, out_dim), global embedding
    (B, out_dim) and the per-stage hard assignments [(B, G1, L), (B, G2, G1)].

    Stage ``i`` runs ``depths[i]`` transformer layers over [its group tokens; the current tokens],
    then a :class:`GroupingBlock` merges the tokens into ``num_group_tokens[i]`` segments; the last
    ``depths[-1]`` layers run over the final segments (ZeroSeg: depths 2, 2, 1 with 32 then 8
    groups). A later stage's group tokens also receive a token-mixing projection of the previous
    stage's group tokens as its transformer layers left them (GroupViT's ``group_projector``).
    z = projector(mean of the segments), the segments first passing one more transformer layer of
    their own with ``global_layer`` (the paper's "Transformer layer to encode all segment tokens";
    without it the last of ``depths`` is that layer, the supplement's 2 + 2 + 1 = 5).
    """

    def __init__(self, in_dim: int = 768, dim: int = 512, num_heads: int = 8, depths: Sequence[int] = (2, 2, 1),
                 num_group_tokens: Sequence[int] = (32, 8), out_dim: int = 768, mlp_ratio: float = 4.0,
                 projector_hidden: int = 2048, gumbel: bool = True, global_layer: bool = True,
                 init: str = "groupvit"):
        super().__init__()
        if len(depths) != len(num_group_tokens) + 1:
            raise ValueError(f"depths {list(depths)} needs one entry per grouping stage plus the final layers "
                             f"(grouping stages: {list(num_group_tokens)}).")
        self.num_group_tokens = list(num_group_tokens)
        self.input_proj = nn.Sequential(nn.LayerNorm(in_dim), nn.Linear(in_dim, dim))
        self.group_tokens = nn.ParameterList(nn.Parameter(torch.zeros(1, g, dim)) for g in num_group_tokens)
        self.stages = nn.ModuleList(
            nn.ModuleList(Block(dim, num_heads, mlp_ratio, qkv_bias=True) for _ in range(d)) for d in depths)
        self.grouping = nn.ModuleList(
            GroupingBlock(dim, num_heads, g, g, gumbel=gumbel) for g in num_group_tokens)
        self.carry = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(dim), TokenMixer(prev, nxt, dim // 2))
            for prev, nxt in zip(num_group_tokens[:-1], num_group_tokens[1:]))
        self.norm = nn.LayerNorm(dim)
        self.global_layer = Block(dim, num_heads, mlp_ratio, qkv_bias=True) if global_layer else None
        self.global_norm = nn.LayerNorm(dim) if global_layer else nn.Identity()
        self.projector = Mlp(dim, projector_hidden, out_dim)
        if init not in HEAD_INITS:
            raise ValueError(f"MODEL.ZEROSEG.HEAD_INIT {init!r} is not one of {HEAD_INITS}.")
        if init == "groupvit":
            self.apply(groupvit_init)
        nn.init.trunc_normal_(self.group_tokens[0], std=0.02)  # later stages stay 0 (GroupViT)

    def forward(self, tokens: torch.Tensor) -> Dict:
        x = self.input_proj(tokens)
        b = x.shape[0]
        assignments, group = [], None
        for i, grouping in enumerate(self.grouping):
            previous = group  # the previous stage's group tokens after its layers
            group = self.group_tokens[i].expand(b, -1, -1)
            if i > 0:
                group = group + self.carry[i - 1](previous)
            y = torch.cat([group, x], dim=1)
            for blk in self.stages[i]:
                y = blk(y)
            group, x = y[:, :group.shape[1]], y[:, group.shape[1]:]
            x, assignment = grouping(x, group)
            assignments.append(assignment)
        for blk in self.stages[-1]:
            x = blk(x)
        x = self.norm(x)
        pooled = (x if self.global_layer is None else self.global_norm(self.global_layer(x))).mean(dim=1)
        return {"segments": self.projector(x), "global": self.projector(pooled), "assignments": assignments}



def groupvit_init(module: nn.Module) -> None:
    """GroupViT's ``_init_weights`` (for ``Module.apply``): linear weights truncated normal with
    std 0.02 and zero biases, LayerNorm weight 1 and bias 0; attention input projections that are
    not ``nn.Linear`` (``nn.MultiheadAttention``) get the linear rule too."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.MultiheadAttention) and module.in_proj_weight is not None:
        nn.init.trunc_normal_(module.in_proj_weight, std=0.02)
        nn.init.zeros_(module.in_proj_bias)
