"""K-means on pixel embeddings: the offline clustering of ViL-Seg's ablation, in place of the online head
(``MODEL.VIL_SEG.CLUSTERING kmeans``)."""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F


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
