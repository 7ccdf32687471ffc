"""Losses shared by the methods."""
import torch


def one_hot_bce_with_logits(logits: torch.Tensor, targets: torch.Tensor, ignore_value: int = 255) -> torch.Tensor:
    """Binary cross-entropy of per-class logits against one-hot targets, averaged over every
    pixel and class, as SED / CAT-Seg train (ignored pixels count as negatives for all classes,
    like the official code).

    Equal to ``F.binary_cross_entropy_with_logits(logits, one_hot)`` (within float rounding) but
    never materialises the (B, N, H, W) one-hot tensor: BCE(x, y) = softplus(x) - x * y. Half and
    bfloat16 logits are computed in float32 (as autocast runs softplus).

    logits: (B, N, H, W); targets: (B, H, W) int64 class ids or ``ignore_value``.
    """
    if logits.shape[1] == 0:
        return logits.sum() * 0
    return _OneHotBCEWithLogits.apply(logits, targets, ignore_value)


class _OneHotBCEWithLogits(torch.autograd.Function):
    """The loss above with its gradient written out, (sigmoid(x) - one_hot) / numel: two passes
    over (B, N, H, W) instead of autograd's chain through softplus, gather and their sum.

    softplus(x) is computed as max(x, 0) + log(1 + exp(-|x|)): on CPUs ``F.softplus`` and
    ``log1p`` run element by element (~11 ns per value, most of a tiny SED training step's loss),
    ``log`` vectorised (~1 ns). log(1 + e) and log1p(e) differ by the rounding of 1 + e, at most
    6e-8 for e in (0, 1], so the mean is the same within float32 rounding (tests/test_sed.py)."""

    @staticmethod
    def forward(ctx, logits, targets, ignore_value):
        x = logits.float() if logits.element_size() < 4 else logits
        valid = targets != ignore_value
        idx = torch.where(valid, targets, torch.zeros_like(targets)).unsqueeze(1)
        positive = (x.gather(1, idx).squeeze(1) * valid).sum()
        softplus = x.relu().sum() + x.abs().neg_().exp_().add_(1).log_().sum()
        ctx.save_for_backward(logits, idx, valid)
        return (softplus - positive) / x.numel()

    @staticmethod
    def backward(ctx, grad):
        logits, idx, valid = ctx.saved_tensors
        x = logits.float() if logits.element_size() < 4 else logits
        g = torch.sigmoid(x).scatter_add_(1, idx, -valid.unsqueeze(1).to(x.dtype))
        return g.mul_(grad / x.numel()).to(logits.dtype), None, None
