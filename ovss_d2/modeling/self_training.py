"""Self-training ("+ ST" of ViL-Seg's Table 1) as the zero-shot segmentation works it is compared
with do it (ZS3Net, CaGNet): the trained model segments the target dataset's unlabelled training
images; for each selected class, the most confident of the pixels predicted as that class over the
whole image set become pseudo-labels (every other pixel is ignored); the model is then fine-tuned on
them with per-pixel cross-entropy.

Selecting "the top ``fraction`` of each class's pixels over the whole set" needs every confidence
before the first label can be written. Confidences are quantised to ``LEVELS`` levels, so that a
first pass only accumulates one histogram per class (:class:`ConfidentPixelSelector`) and keeps a
(predicted class, level) pair per pixel; the thresholds then follow from the histograms and a second
pass over the kept pairs writes the labels (:meth:`ConfidentPixelSelector.pseudo_label`).
"""
import math
from typing import Sequence, Tuple

import torch
import torch.nn.functional as F

LEVELS = 65536  # confidence quantisation: a level fits a 16-bit PNG


def quantize_confidence(probs: torch.Tensor, levels: int = LEVELS) -> Tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W) class probabilities of one image -> (H, W) int64 predicted class (argmax) and
    (H, W) int64 confidence level ``round(max prob * (levels - 1))`` in [0, levels)."""
    conf, pred = probs.float().max(dim=0)
    return pred, (conf.clamp(0, 1) * (levels - 1)).round().long()


class ConfidentPixelSelector:
    """Per-class "top ``fraction`` most confident pixels" over a set of images.

    Args:
        num_classes: N, the vocabulary size of the predictions.
        classes: the class ids that get pseudo-labels (e.g. the unseen classes).
        fraction: share of each class's predicted pixels kept, in (0, 1]. Ties at the threshold
            level are all kept, so at least this share is kept.
        levels: number of confidence levels (:func:`quantize_confidence`).
    """

    def __init__(self, num_classes: int, classes: Sequence[int], fraction: float, levels: int = LEVELS):
        if not 0 < fraction <= 1:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        bad = [c for c in classes if not 0 <= c < num_classes]
        if bad:
            raise ValueError(f"class ids {bad} are outside the vocabulary of {num_classes} classes")
        self.num_classes, self.fraction, self.levels = num_classes, fraction, levels
        self.classes = sorted(set(int(c) for c in classes))
        self.slot = torch.full((num_classes,), -1, dtype=torch.long)  # class id -> histogram row
        self.slot[self.classes] = torch.arange(len(self.classes))
        self.hist = torch.zeros(len(self.classes), levels, dtype=torch.long)  # (S, levels)

    def add(self, pred: torch.Tensor, level: torch.Tensor) -> None:
        """Count one image's pixels: pred, level (H, W) int64 from :func:`quantize_confidence`."""
        slot = self.slot[pred.cpu()]
        keep = slot >= 0
        idx = slot[keep] * self.levels + level.cpu()[keep]
        self.hist += torch.bincount(idx, minlength=self.hist.numel()).view_as(self.hist)

    def thresholds(self) -> torch.Tensor:
        """(N,) int64: the lowest confidence level kept per class, i.e. the highest level t with at
        least ``ceil(fraction * n_c)`` of the class's n_c pixels at level >= t. Classes that are not
        selected or never predicted get ``levels`` (nothing kept)."""
        out = torch.full((self.num_classes,), self.levels, dtype=torch.long)
        if not self.classes:
            return out
        at_least = self.hist.flip(1).cumsum(1).flip(1)  # (S, levels): pixels at level >= t
        need = torch.tensor([math.ceil(self.fraction * n) for n in self.hist.sum(1).tolist()])
        ok = at_least >= need.unsqueeze(1)  # True for t = 0, then False from some t on
        highest = self.levels - 1 - ok.flip(1).long().argmax(1)
        out[self.classes] = torch.where(need == 0, torch.full_like(highest, self.levels), highest)
        return out

    def pseudo_label(self, pred: torch.Tensor, level: torch.Tensor, thresholds: torch.Tensor,
                     ignore_value: int = 255) -> torch.Tensor:
        """(H, W) pseudo-label map: the predicted class where the pixel's level reaches its class's
        threshold, ``ignore_value`` elsewhere."""
        keep = level >= thresholds.to(pred.device)[pred]
        return torch.where(keep, pred, torch.full_like(pred, ignore_value))


def pixel_cross_entropy(pixel_emb: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                        targets: torch.Tensor, ignore_value: int = 255) -> torch.Tensor:
    """The fine-tuning loss: per-pixel cross-entropy of the cosine logits.

    pixel_emb: (B, D, h, w) per-patch embeddings; text: (N, D) normalised class embeddings;
    logit_scale: scalar 1 / temperature; targets: (B, H, W) int64 pseudo-labels (``ignore_value``
    where none). The (B, N, h, w) logits ``s * cos(e_pxl, t_n)`` are upsampled bilinearly to
    (H, W); returns the mean over labelled pixels (0 with a gradient when there is none)."""
    logits = logit_scale * torch.einsum("bdhw,nd->bnhw", F.normalize(pixel_emb.float(), dim=1), text.float())
    logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    if not (targets != ignore_value).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, targets, ignore_index=ignore_value)
