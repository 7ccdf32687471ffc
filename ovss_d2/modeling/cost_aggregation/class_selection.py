"""Class selection, shared by SED (early rejection) and ERR-Seg (CRM): choose a subset of the N
classes, run the rest of the decoder on the kept ones only (:func:`select_classes`,
:func:`select_class_rows`), and fill the others' logits (:func:`fill_rejected`). The choice: SED's
:func:`topk_union` (one set for the batch), ERR-Seg's :func:`crm_select` (one set per image).

Kept classes are (K,) indices shared by the batch or (B, K) per image. All operations are
vectorised over the batch, classes and pixels."""
import torch

REJECTED_LOGIT = -1e4  # large negative, finite in fp16 too


def topk_union(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (sorted) of the classes that are among the top-``k`` of at least one pixel.

    scores: (B, N, H, W) per-class scores; the union is over all pixels of all images of the
    batch (one class set per batch, so tensors stay rectangular). Returns (K,) int64."""
    n = scores.shape[1]
    if k >= n:
        return torch.arange(n, device=scores.device)
    top = scores.topk(k, dim=1).indices  # (B, k, H, W)
    # index_fill_ with a Python scalar: ``hit[idx] = True`` would first make a host tensor of True
    hit = torch.zeros(n, dtype=torch.int8, device=scores.device).index_fill_(0, top.reshape(-1), 1)
    return hit.nonzero(as_tuple=False).squeeze(1)  # the one synchronisation: K depends on the data


def select_classes(x: torch.Tensor, keep: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The kept classes of a tensor with the batch first and the class axis at ``dim``:
    (B, ..., N, ...) -> (B, ..., K, ...). ``keep``: (K,) shared by the batch or (B, K) per image."""
    if keep.dim() == 1:
        return x[(slice(None),) * dim + (keep,)]
    b, k = keep.shape
    index = keep.view(b, *[1] * (dim - 1), k, *[1] * (x.dim() - dim - 1))
    return x.gather(dim, index.expand(*x.shape[:dim], k, *x.shape[dim + 1:]))


def select_class_rows(x: torch.Tensor, num_classes: int, keep: torch.Tensor) -> torch.Tensor:
    """The rows of the kept classes of every image: (B*N, ...) -> (B*K, ...), class axis folded
    into the batch (image-major)."""
    b = x.shape[0] // num_classes
    return select_classes(x.view(b, num_classes, *x.shape[1:]), keep).flatten(0, 1)


def fill_rejected(logits: torch.Tensor, keep: torch.Tensor, num_classes: int,
                  value: float = REJECTED_LOGIT) -> torch.Tensor:
    """(B, K, H, W) logits of the kept classes -> (B, N, H, W), ``value`` for the others.
    ``keep``: (K,) class indices shared by the batch (SED) or (B, K) per image (ERR-Seg)."""
    b, k, h, w = logits.shape
    index = keep.expand(b, k) if keep.dim() == 1 else keep
    out = logits.new_full((b, num_classes, h, w), value)
    return out.scatter(1, index.view(b, k, 1, 1).expand(-1, -1, h, w), logits)


CRM_RANK_WEIGHTS = (1.0, 0.1, 0.01)


def crm_scores(cost: torch.Tensor) -> torch.Tensor:
    """ERR-Seg's class score: each pixel's 1st, 2nd and 3rd class (template-averaged cost) get
    1, 0.1 and 0.01. cost: (B, P, N, H, W) -> (B, N)."""
    b, _, n, _, _ = cost.shape
    ranks = min(len(CRM_RANK_WEIGHTS), n)
    avg = cost[:, 0] if cost.shape[1] == 1 else cost.mean(dim=1)  # single template: no averaging pass
    top = avg.topk(ranks, dim=1).indices  # (B, r, H, W)
    # rank weights filled on the device (a tensor built from a Python list would be a host-to-device
    # copy, i.e. a synchronisation, in every forward)
    src = torch.cat([torch.full_like(top[:, :1], w, dtype=torch.float32) for w in CRM_RANK_WEIGHTS[:ranks]], 1)
    return torch.zeros(b, n, device=cost.device).scatter_add_(1, top.reshape(b, -1), src.reshape(b, -1))


def crm_select(cost: torch.Tensor, k: int, gt_classes=None) -> torch.Tensor:
    """Channel reduction (ERR-Seg CRM): the ``k`` highest-scoring classes of every image. In
    training (``gt_classes``, a (B, N) boolean mask) the authors' rule: the ground-truth classes,
    then the lowest-id classes among the top-``k`` candidates, the first ``k`` of that list (an image
    with more than ``k`` ground-truth classes keeps its ``k`` lowest ids). Returns (B, min(k, N))
    class indices, sorted. Vectorised over the batch and classes."""
    scores = crm_scores(cost)
    n = scores.shape[1]
    k = min(k, n)
    top = scores.topk(k, dim=1).indices
    if gt_classes is None:
        return top.sort(dim=1).values
    ids = torch.arange(n, device=scores.device).expand_as(scores)
    candidates = torch.zeros_like(gt_classes, dtype=torch.bool).scatter_(1, top, True)
    # rank: ground truth by id, then the candidates by id, then every other class
    rank = torch.where(gt_classes, ids, torch.where(candidates, ids + n, ids + 2 * n))
    return rank.topk(k, dim=1, largest=False).indices.sort(dim=1).values
