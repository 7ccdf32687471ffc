"""Pixel clustering for ViL-Seg: the online clustering head trained with IIC's mutual-information
objective, undoing the flip of the transformed view, cluster-averaged embeddings, and the K-means
alternative of the paper's ablation (offline clustering in place of the head).
"""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..distributed import all_reduce_mean_with_grad


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


def undo_hflip(x: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """``g^-1`` of a horizontal flip on features: flips back the maps of the flipped images.

    x: (B, C, h, w) features of the transformed images; flipped: (B,) bool. Returns (B, C, h, w)
    aligned pixel by pixel with the features of the untransformed images."""
    flipped = flipped.to(device=x.device, dtype=torch.bool).view(-1, *([1] * (x.dim() - 1)))
    return torch.where(flipped, x.flip(-1), x)


def iic_joint_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """ViL-Seg Eq. 7: ``J = 1/N sum_i p_i q_i^T`` over every pixel of the batch (all ranks).

    p, q: (N, C) paired soft assignments (rows sum to 1), the same N on every rank. Returns (C, C),
    summing to 1; ``J[c, c']`` = P(first view in c, second view in c')."""
    if p.shape != q.shape or p.dim() != 2:
        raise ValueError(f"assignments must both be (N, C), got {tuple(p.shape)} and {tuple(q.shape)}")
    dtype = torch.promote_types(p.dtype, torch.float32)  # float32 at least, float64 kept
    with torch.autocast(device_type=p.device.type, enabled=False):  # logs of small probabilities follow
        joint = p.to(dtype).T @ q.to(dtype) / p.shape[0]
    return all_reduce_mean_with_grad(joint)


def mutual_information(joint: torch.Tensor) -> torch.Tensor:
    """ViL-Seg Eq. 8: ``I(J) = sum_{c,c'} J[c,c'] ln(J[c,c'] / (J_c J_c'))`` of a (C, C) joint
    distribution, with ``J_c`` / ``J_c'`` its row / column sums (zero entries contribute 0)."""
    pi = joint.sum(dim=1, keepdim=True)
    pj = joint.sum(dim=0, keepdim=True)
    eps = torch.finfo(joint.dtype).eps
    log_ratio = joint.clamp_min(eps).log() - pi.clamp_min(eps).log() - pj.clamp_min(eps).log()
    return (joint * log_ratio).sum()


def iic_loss(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The clustering objective to minimise: ``-I(J)`` for soft assignment maps p, q (B, C, h, w)
    of an image and of its transformed copy mapped back (:func:`undo_hflip`). At most ``ln C``
    in magnitude, reached by a perfect clustering that uses every cluster equally."""
    c = p.shape[1]
    joint = iic_joint_distribution(p.movedim(1, -1).reshape(-1, c), q.movedim(1, -1).reshape(-1, c))
    return -mutual_information(joint)


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


def kmeans(x: torch.Tensor, k: int, iters: int = 30, generator: Optional[torch.Generator] = None
           ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's K-means with k-means++ seeding (Euclidean).

    x: (N, D). Returns (N,) int64 labels and (k', D) centres, k' = min(k, N). Deterministic for a
    given ``generator``; stops early when no label changes."""
    n = x.shape[0]
    k = min(k, n)
    x = x.float()
    first = torch.randint(n, (1,), generator=generator, device="cpu").item()
    centers = [x[first]]
    d2 = (x - x[first]).pow(2).sum(1)
    for _ in range(1, k):
        total = d2.sum()
        if total <= 0:  # fewer distinct points than k: duplicate centres stay empty
            idx = torch.randint(n, (1,), generator=generator, device="cpu").item()
        else:
            idx = torch.multinomial((d2 / total).cpu(), 1, generator=generator).item()
        centers.append(x[idx])
        d2 = torch.minimum(d2, (x - x[idx]).pow(2).sum(1))
    centers = torch.stack(centers)
    labels = torch.cdist(x, centers).argmin(1)
    for _ in range(iters):
        onehot = F.one_hot(labels, k).to(x.dtype)
        counts = onehot.sum(0)
        new = (onehot.T @ x) / counts.clamp_min(1).unsqueeze(1)
        centers = torch.where(counts.unsqueeze(1) > 0, new, centers)
        new_labels = torch.cdist(x, centers).argmin(1)
        if torch.equal(new_labels, labels):
            break
        labels = new_labels
    return labels, centers
