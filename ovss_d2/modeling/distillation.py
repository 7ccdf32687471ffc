"""Multi-scale CLIP feature distillation (ZeroSeg): grid views of an image, their teacher
embeddings, and the two distillation losses.

View order, used by the cache and the losses alike: grid g = 1, 2, 3, 4 in ``grids`` order, each
grid's cells in raster order. With the default grids (1, 2, 3, 4) that is 1 + 4 + 9 + 16 = 30 views,
view 0 being the whole image.
"""
from typing import List, Sequence, Tuple

import torch
import torch.nn.functional as F

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


def segment_matching_loss(segments: torch.Tensor, local_features: torch.Tensor) -> torch.Tensor:
    """Each segment token (B, G, D) is matched to its nearest local view feature (B, V', D) by L1
    distance (mean absolute difference per channel, unit-normalised embeddings); the distances to
    the matches are summed over the segments and averaged over images. ``local_features`` must
    exclude the whole-image view."""
    s = F.normalize(segments.float(), dim=-1)
    dist = (s[:, :, None] - local_features.float()[:, None]).abs().mean(-1)  # (B, G, V')
    return dist.min(dim=-1).values.sum(dim=1).mean()
