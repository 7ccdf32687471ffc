"""The upsampling step of SED's and ERR-Seg's decoders: per-class maps upsampled and fused with
the encoder feature of the finer scale."""
from typing import List

import torch
import torch.nn as nn


def conv_norm_relu_pair(in_dim: int, out_dim: int, group_channels: int) -> List[nn.Module]:
    """(3x3 conv without bias, GroupNorm of ``group_channels`` channels a group, ReLU) x 2."""
    layers = []
    for d in (in_dim, out_dim):
        layers += [nn.Conv2d(d, out_dim, 3, padding=1, bias=False), nn.GroupNorm(out_dim // group_channels, out_dim),
                   nn.ReLU(inplace=True)]
    return layers


class GuidedUpsampling(nn.Module):
    """2x transposed conv to ``up_dim`` channels (a 1x1 conv without upsampling when ``upsample``
    is False), concatenated with the image guidance of that scale (repeated for each class) and any
    per-class maps (``side_dim`` channels together), then two 3x3 conv + GroupNorm + ReLU.

    SED's skip-layer fusion (GroupNorm of 16 channels, the cost map as a per-class map) and
    ERR-Seg's gradual upsampling (8 channels)."""

    def __init__(self, in_dim: int, up_dim: int, side_dim: int, out_dim: int, group_channels: int,
                 upsample: bool = True):
        super().__init__()
        self.up_conv = nn.ConvTranspose2d(in_dim, up_dim, 2, stride=2) if upsample else nn.Conv2d(in_dim, up_dim, 1)
        self.fuse = nn.Sequential(*conv_norm_relu_pair(up_dim + side_dim, out_dim, group_channels))

    def forward(self, x: torch.Tensor, guidance: torch.Tensor, *class_maps: torch.Tensor) -> torch.Tensor:
        """x: (B*N, C_in, H, W) rows image-major; guidance: (B, G, sH, sW); class_maps: (B*N, C_i,
        sH, sW) -> (B*N, C_out, sH, sW) (s = 2, or 1 without upsampling)."""
        x = self.up_conv(x)
        g = guidance.repeat_interleave(x.shape[0] // guidance.shape[0], dim=0)
        return self.fuse(torch.cat([x, g, *class_maps], dim=1))
