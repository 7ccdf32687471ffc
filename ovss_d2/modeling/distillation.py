"""Multi-scale CLIP feature distillation (ZeroSeg): grid views of an image, their teacher
embeddings, the two distillation losses of the paper and the segment-matching variants that are
not in it (config switches, ``MODEL.ZEROSEG.MATCHING``; docs/methods/zeroseg.md measures each).

View order, used by the cache and the losses alike: grid g = 1, 2, 3, 4 in ``grids`` order, each
grid's cells in raster order. With the default grids (1, 2, 3, 4) that is 1 + 4 + 9 + 16 = 30 views,
view 0 being the whole image.
"""
from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

Box = Tuple[int, int, int, int]  # y0, y1, x0, x1 (end exclusive)


def grid_boxes(height: int, width: int, grids: Sequence[int]) -> List[Box]:
    """Cells of every g x g grid over a (height, width) image. Cell edges are at round(i * size / g),
    so each grid's cells tile the image exactly, also when the size is not a multiple of g."""
    boxes = []
    for g in grids:
        ys = [round(i * height / g) for i in range(g + 1)]
        xs = [round(i * width / g) for i in range(g + 1)]
        boxes += [(ys[r], ys[r + 1], xs[c], xs[c + 1]) for r in range(g) for c in range(g)]
    return boxes


def num_views(grids: Sequence[int]) -> int:
    return sum(g * g for g in grids)


def local_view_mask(grids: Sequence[int]) -> torch.Tensor:
    """(V,) bool: True for the views that are grid cells, False for the whole image (grid 1)."""
    return torch.tensor([g != 1 for g in grids for _ in range(g * g)])


def multi_scale_views(images: torch.Tensor, grids: Sequence[int], size: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, V, C, size, size): every grid cell resized (bilinear) to ``size``."""
    h, w = images.shape[-2:]
    views = [F.interpolate(images[..., y0:y1, x0:x1], size=(size, size), mode="bilinear", align_corners=False)
             for y0, y1, x0, x1 in grid_boxes(h, w, grids)]
    return torch.stack(views, dim=1)


@torch.no_grad()
def teacher_view_features(clip, images: torch.Tensor, grids: Sequence[int], size: int,
                          chunk: int = 64) -> torch.Tensor:
    """(B, 3, H, W) CLIP-normalised images -> (B, V, D) unit-norm teacher embeddings of every view
    (``clip``: a CLIPWrapper; its image encoder runs in chunks of ``chunk`` views)."""
    views = multi_scale_views(images, grids, size)
    b, v = views.shape[:2]
    flat = views.flatten(0, 1)
    feats = torch.cat([clip.encode_image(flat[i:i + chunk]).float() for i in range(0, flat.shape[0], chunk)])
    return F.normalize(feats, dim=-1).reshape(b, v, -1)


def multiscale_distillation_loss(global_embedding: torch.Tensor, view_features: torch.Tensor) -> torch.Tensor:
    """L1 between the global embedding z (B, D) and every view feature (B, V, D), both unit-normalised:
    the mean absolute difference per channel, averaged over views and images."""
    z = F.normalize(global_embedding.float(), dim=-1)[:, None]
    return (z - view_features.float()).abs().mean()


def segment_view_distances(segments: torch.Tensor, local_features: torch.Tensor) -> torch.Tensor:
    """(B, G, V') L1 distances (mean absolute difference per channel) between the unit-normalised
    segment embeddings (B, G, D) and the local view features (B, V', D)."""
    s = F.normalize(segments.float(), dim=-1)
    return (s[:, :, None] - local_features.float()[:, None]).abs().mean(-1)


def segment_matching_loss(segments: torch.Tensor, local_features: torch.Tensor) -> torch.Tensor:
    """The paper's Eq. 1: each segment token (B, G, D) is matched to its nearest local view feature
    (B, V', D) by L1 distance (mean absolute difference per channel, unit-normalised embeddings);
    the distances to the matches are summed over the segments and averaged over images.
    ``local_features`` must exclude the whole-image view."""
    return segment_view_distances(segments, local_features).min(dim=-1).values.sum(dim=1).mean()


def reverse_matching_loss(segments: torch.Tensor, local_features: torch.Tensor) -> torch.Tensor:
    """Not in the paper: the reverse of Eq. 1, each local view (B, V', D) to its nearest segment
    (B, G, D), averaged over the views and multiplied by G (the scale of Eq. 1's sum over the
    segments), averaged over images. Zero only when every view has a segment equal to it, so the
    segments must span the cells' embeddings (Eq. 1 alone is zero when all segments equal one cell)."""
    dist = segment_view_distances(segments, local_features)
    return dist.min(dim=1).values.mean(dim=1).mul(segments.shape[1]).mean()


def one_to_one_matching_loss(segments: torch.Tensor, local_features: torch.Tensor) -> torch.Tensor:
    """Not in the paper: Eq. 1 with a one-to-one matching, each segment (B, G, D) to a different
    local view (B, V', D), G <= V', the assignment of least total L1 distance (Hungarian algorithm,
    no gradient through the choice); summed over the segments, averaged over images."""
    dist = segment_view_distances(segments, local_features)
    if dist.shape[1] > dist.shape[2]:
        raise ValueError(f"One-to-one matching needs at most as many segments ({dist.shape[1]}) as local views "
                         f"({dist.shape[2]}).")
    cost = dist.detach().cpu().numpy()
    total = dist.new_zeros(())
    for b in range(dist.shape[0]):
        rows, cols = linear_sum_assignment(cost[b])
        rows, cols = torch.as_tensor(rows, device=dist.device), torch.as_tensor(cols, device=dist.device)
        total = total + dist[b, rows, cols].sum()
    return total / dist.shape[0]


def token_cell_overlap(grid: Tuple[int, int], patch: int, grids: Sequence[int]) -> torch.Tensor:
    """(V', h * w) fraction of each patch token's area inside each local view (grid cells of every
    grid but 1, in view order, cells as :func:`grid_boxes` cuts the (h * patch, w * patch) image;
    tokens in raster order). Each grid's rows of a column sum to 1."""
    h, w = grid
    boxes = grid_boxes(h * patch, w * patch, [g for g in grids if g != 1])

    def overlap(start, end, n):  # (n,) length of [i * patch, (i + 1) * patch) inside [start, end)
        lo = np.arange(n) * patch
        return np.clip(np.minimum(lo + patch, end) - np.maximum(lo, start), 0, None)

    rows = [np.outer(overlap(y0, y1, h), overlap(x0, x1, w)).reshape(-1) for y0, y1, x0, x1 in boxes]
    return torch.from_numpy(np.stack(rows) / float(patch * patch)).float()


def coverage_matching_loss(segments: torch.Tensor, assignment: torch.Tensor, local_features: torch.Tensor,
                           overlap: torch.Tensor) -> torch.Tensor:
    """Not in the paper: segment matching tied to where the segments are. Every visible token
    takes as targets the local views that cover it, and is scored against the segment it is
    assigned to; the loss is the mean over tokens of the overlap-weighted L1 distance between its
    segment (B, G, D) and those views (B, V', D), averaged over the grids, times G (the scale of
    Eq. 1's sum over G segments), averaged over images.

    assignment: (B, G, K) token-to-final-segment assignment (one-hot columns in the forward pass;
    the straight-through gradient moves each token towards the segment whose distance to its cells
    is smallest); overlap: (B, V', K) area fraction of each visible token inside each view
    (:func:`token_cell_overlap` gathered at the kept tokens). A segment that covers an object and a
    stuff region pays the distance to both kinds of cell, so the loss is lowest when segments follow
    the regions the teacher tells apart; unlike Eq. 1 it cannot be met by all segments equal to one
    cell."""
    dist = segment_view_distances(segments, local_features)  # (B, G, V')
    per_view = overlap.float() / overlap.float().sum(dim=1, keepdim=True).clamp_min(1e-6)  # (B, V', K)
    token_cost = dist @ per_view  # (B, G, K): mean over the token's cells, weighted by overlap
    return (assignment.float() * token_cost).sum(dim=1).mean(dim=1).mul(segments.shape[1]).mean()
