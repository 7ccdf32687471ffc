"""Losses shared by the methods."""
import torch
import torch.nn.functional as F


def one_hot_bce_with_logits(logits: torch.Tensor, targets: torch.Tensor, ignore_value: int = 255) -> torch.Tensor:
    """Binary cross-entropy of per-class logits against one-hot targets, averaged over every
    pixel and class, as SED / CAT-Seg train (ignored pixels count as negatives for all classes,
    like the official code).

    Equal to ``F.binary_cross_entropy_with_logits(logits, one_hot)`` but never materialises the
    (B, N, H, W) one-hot tensor: BCE(x, y) = softplus(x) - x * y.

    logits: (B, N, H, W); targets: (B, H, W) int64 class ids or ``ignore_value``.
    """
    n = logits.shape[1]
    valid = targets != ignore_value
    idx = torch.where(valid, targets, torch.zeros_like(targets)).unsqueeze(1)
    positive = logits.gather(1, idx).squeeze(1) * valid
    return (F.softplus(logits).sum() - positive.sum()) / logits.numel() if n else logits.sum() * 0
