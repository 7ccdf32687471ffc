"""Whether a grouping model's segments collapsed (ZeroSeg's diagnostics, ``tools/zeroseg_diagnostics.py``):
how many of the final groups an image actually uses, how much of it the largest one takes, how
alike the segment embeddings are and how many of the used groups could be told apart."""
from typing import Dict, Iterable

import torch
import torch.nn.functional as F
from scipy.sparse.csgraph import connected_components

# Segments at least this alike count as one in ``distinct_groups``: the collapse the diagnostics were
# made for had a mean pairwise cosine of 0.9999; the target for a healthy model is < 0.9.
DUPLICATE_COSINE = 0.9


def mean_pairwise_cosine(embeddings: torch.Tensor) -> float:
    """Mean cosine similarity over the G (G - 1) / 2 distinct pairs of (G, D) embeddings (NaN for
    G < 2). 1.0 when every embedding points the same way."""
    g = embeddings.shape[0]
    if g < 2:
        return float("nan")
    e = F.normalize(embeddings.float(), dim=-1)
    sim = e @ e.T
    return float(sim.triu(diagonal=1).sum() / (g * (g - 1) / 2))


def distinct_embeddings(embeddings: torch.Tensor, duplicate_cosine: float = DUPLICATE_COSINE) -> int:
    """How many of the (G, D) embeddings remain once those with a cosine similarity of at least
    ``duplicate_cosine`` are merged, transitively (connected components of the "alike" graph). G
    equal embeddings count 1; G pairwise orthogonal ones count G."""
    if embeddings.shape[0] == 0:
        return 0
    e = F.normalize(embeddings.float(), dim=-1)
    alike = (e @ e.T >= duplicate_cosine).cpu().numpy()
    return int(connected_components(alike, directed=False)[0])


def segment_statistics(segments: torch.Tensor, groups: torch.Tensor) -> Dict[str, float]:
    """One image's collapse statistics.

    segments: (G, D) segment embeddings; groups: (H, W) int64 final group of every pixel.
    Returns ``groups_used`` (distinct groups among the pixels), ``largest_group`` (share of the
    pixels in the largest group), ``segment_cosine`` (mean pairwise cosine of all G segments) and
    ``used_segment_cosine`` (the same over the used groups only; NaN with fewer than two) and
    ``distinct_groups`` (:func:`distinct_embeddings` of the used groups' segments: 1 when the image
    gets one label whatever the number of groups, the collapse)."""
    counts = torch.bincount(groups.reshape(-1), minlength=segments.shape[0])
    used = counts > 0
    return {
        "groups_used": float(used.sum()),
        "largest_group": float(counts.max() / counts.sum()),
        "segment_cosine": mean_pairwise_cosine(segments),
        "used_segment_cosine": mean_pairwise_cosine(segments[used]),
        "distinct_groups": float(distinct_embeddings(segments[used])),
    }


def average_statistics(per_image: Iterable[Dict[str, float]]) -> Dict[str, float]:
    """Mean of each statistic over the images (NaN entries skipped), with ``images`` the count."""
    rows = list(per_image)
    out = {"images": float(len(rows))}
    for key in (rows[0] if rows else {}):
        values = torch.tensor([r[key] for r in rows], dtype=torch.float64)
        values = values[~values.isnan()]
        out[key] = float(values.mean()) if len(values) else float("nan")
    return out


def group_oracle_labels(groups: torch.Tensor, label: torch.Tensor, ignore_label: int = 255) -> torch.Tensor:
    """The best any naming of the groups can do: every group labelled with the ground-truth class
    that covers most of its pixels.

    groups: (H, W) int64 final group of every pixel; label: (H, W) int64 ground truth (``ignore_label``
    not counted). Returns (H, W) int64 labels (``ignore_label`` for a group of ignored pixels only).
    Its mIoU against ``label`` bounds what naming can reach: a low value means the groups do not
    follow the classes' regions, whatever the segment embeddings say."""
    valid = label != ignore_label
    num_groups, num_classes = int(groups.max()) + 1, int(label[valid].max()) + 1 if valid.any() else 1
    counts = torch.bincount(groups[valid] * num_classes + label[valid], minlength=num_groups * num_classes)
    counts = counts.view(num_groups, num_classes)
    best = counts.argmax(1).masked_fill(counts.sum(1) == 0, ignore_label)
    return best[groups]
