"""Region-level features of ViL-Seg: the pixel embeddings averaged over each cluster."""
from typing import Tuple

import torch
import torch.nn.functional as F


def cluster_average(pixel_emb: torch.Tensor, assignment: torch.Tensor, num_clusters: int
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Region-level features ``e_rgn(M_c) = sum(e_pxl * M_c) / sum(M_c)`` (ViL-Seg Sec. 3.3).

    pixel_emb: (B, D, h, w); assignment: (B, h, w) int64 in [0, num_clusters).
    Returns the (B, C, D) mean embedding of each cluster (zero for an empty one) and the (B, C)
    pixel counts."""
    b, d = pixel_emb.shape[:2]
    onehot = F.one_hot(assignment.reshape(b, -1), num_clusters).to(pixel_emb.dtype)  # (B, hw, C)
    sums = onehot.transpose(1, 2) @ pixel_emb.reshape(b, d, -1).transpose(1, 2)  # (B, C, D)
    counts = onehot.sum(dim=1)
    return sums / counts.clamp_min(1).unsqueeze(-1), counts
