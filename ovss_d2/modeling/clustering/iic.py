"""IIC's mutual-information clustering objective as ViL-Seg uses it (Eq. 5-8), and ``g^-1``: undoing the
flip of the transformed view so that its pixels pair with the original's."""
import torch

from ..distributed import all_reduce_mean_with_grad


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
