"""The first step of both cost-aggregation decoders: the cost map embedded class by class."""
import torch
import torch.nn as nn


class CostEmbedding(nn.Module):
    """Cost map (B, P, N, h, w) -> per-class embedding (B*N, C, h, w) with one convolution over
    the template axis (SED: 7x7, P -> 128; ERR-Seg: one per cost-map scale)."""

    def __init__(self, num_templates: int, dim: int, kernel_size: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(num_templates, dim, kernel_size, padding=kernel_size // 2)

    def forward(self, cost: torch.Tensor) -> torch.Tensor:
        b, p, n, h, w = cost.shape
        return self.embed_rows(cost.transpose(1, 2).reshape(b * n, p, h, w))

    def embed_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The cost map already folded per class: (B*N, P, h, w) -> (B*N, C, h, w)."""
        return self.conv(rows)
