"""ViL-Seg's online clustering head ``Phi_c`` (trained with the IIC objective, :mod:`.iic`)."""
import torch
import torch.nn as nn


class OnlineClusteringHead(nn.Module):
    """``Phi_c``: a 1x1 convolution from the D-dim pixel embeddings to C cluster logits; the
    softmax over them is the soft assignment, the argmax the clustering mask.

    Args:
        in_dim: pixel-embedding dimension D.
        num_clusters: C (25 in the paper's main setting).
    """

    def __init__(self, in_dim: int, num_clusters: int = 25):
        super().__init__()
        if num_clusters < 2:
            raise ValueError(f"num_clusters must be at least 2, got {num_clusters}")
        self.num_clusters = num_clusters
        self.conv = nn.Conv2d(in_dim, num_clusters, kernel_size=1)

    def forward(self, pixel_emb: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, C, h, w) cluster probabilities."""
        return self.conv(pixel_emb).softmax(dim=1)

    @torch.no_grad()
    def assign(self, pixel_emb: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) -> (B, h, w) int64 cluster of each pixel (argmax)."""
        return self.conv(pixel_emb).argmax(dim=1)
