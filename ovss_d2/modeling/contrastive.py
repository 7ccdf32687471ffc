"""Contrastive objectives for training an image encoder from image-caption pairs (ViL-Seg):

* :func:`cross_modal_info_nce`: InfoNCE between image and caption embeddings, the negatives of
  every rank included (ViL-Seg Eq. 3-4; CLIP's loss when symmetric);
* :class:`MultiCropDistillation`: the vision-based contrast between one global and several local
  views through a linear projection + softmax (ViL-Seg Eq. 2, multi-crop as in SwAV), with DINO's
  recipe (centring, sharpening, EMA teacher: :func:`ema_update_`, :func:`dino_teacher_momentum`) as
  an option.
"""
import math
from typing import Optional

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from .distributed import all_gather_with_grad, world_size


def cross_modal_info_nce(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor,
                         symmetric: bool = False) -> torch.Tensor:
    """InfoNCE of the paired rows of ``image_emb`` and ``text_emb`` against every rank's texts.

    Args:
        image_emb: (n, D) this rank's image embeddings (any norm; cosine similarity is used).
        text_emb: (n, D) the embeddings of their captions (row i pairs with image i).
        logit_scale: scalar tensor 1 / temperature.
        symmetric: also the caption-to-image term, averaged with the image-to-caption one (CLIP);
            False is the paper's Eq. 3-4 (image to caption only).

    Returns:
        scalar: mean over this rank's images of ``-log softmax_j(s * cos(v_i, t_j))[i]``, j running
        over the captions of all ranks. Its mean over ranks (what DDP's gradient averaging
        optimises) equals the single-process loss of the concatenated batch.
    """
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"image embeddings {tuple(image_emb.shape)} and text embeddings "
                         f"{tuple(text_emb.shape)} must pair row by row")
    dtype = torch.promote_types(image_emb.dtype, torch.float32)  # float32 at least, float64 kept
    with torch.autocast(device_type=image_emb.device.type, enabled=False):  # (n, W n) logits in full precision
        img = F.normalize(image_emb.to(dtype), dim=-1)
        txt = F.normalize(text_emb.to(dtype), dim=-1)
        all_txt, offset = all_gather_with_grad(txt)
        labels = torch.arange(img.shape[0], device=img.device) + offset
        loss = F.cross_entropy(logit_scale.to(dtype) * img @ all_txt.T, labels)
        if symmetric:
            all_img, _ = all_gather_with_grad(img)
            loss = (loss + F.cross_entropy(logit_scale.to(dtype) * txt @ all_img.T, labels)) / 2
    return loss


class MultiCropDistillation(nn.Module):
    """ViL-Seg's vision-based contrast (Eq. 2): ``H(Phi_a(e(x)), Phi_a(e(x_local)))``.

    ``Phi_a`` is a linear layer to ``out_dim`` (2048 in the paper) followed by a softmax, applied
    to L2-normalised image embeddings. The global view's distribution is the target (computed
    without gradient, as a distillation teacher's output is) and each local view's distribution is
    trained towards it by cross-entropy.

    Two recipes:

    * ``centering=False`` with both temperatures 1: Eq. 2 as the paper writes it (one ``Phi_a``,
      plain softmax);
    * ``centering=True`` with ``teacher_temp`` 0.04, ``student_temp`` 0.1 (and an EMA ``teacher_proj``
      passed to :meth:`forward`): DINO's recipe (Caron et al. 2021), not the paper's: the target is
      centred (EMA of the mean target logits over all ranks, ``center_momentum``) and sharpened, so
      that the projection can neither collapse to one output nor to the uniform distribution.

    Args:
        in_dim: embedding dimension D.
        out_dim: projection size K.
        teacher_temp, student_temp: softmax temperatures of the global / local branches.
        center_momentum: EMA momentum of the centre (used with ``centering``).
        centering: subtract the centre from the target logits (and update it in training).
    """

    def __init__(self, in_dim: int, out_dim: int = 2048, teacher_temp: float = 0.04, student_temp: float = 0.1,
                 center_momentum: float = 0.9, centering: bool = True):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.teacher_temp, self.student_temp, self.center_momentum = teacher_temp, student_temp, center_momentum
        self.centering = centering
        self.register_buffer("center", torch.zeros(out_dim))

    def project(self, emb: torch.Tensor, proj: Optional[nn.Linear] = None) -> torch.Tensor:
        """(..., D) embeddings -> (..., K) float32 logits of Phi_a (or of ``proj``) before the softmax."""
        return (proj or self.proj)(F.normalize(emb.float(), dim=-1)).float()

    def forward(self, global_emb: torch.Tensor, local_emb: torch.Tensor,
                teacher_proj: Optional[nn.Linear] = None) -> torch.Tensor:
        """
        Args:
            global_emb: (B, D) embeddings of the global views (from the EMA teacher encoder in
                DINO's recipe).
            local_emb: (V, B, D) embeddings of the V local views of the same images.
            teacher_proj: the projection of the target branch (DINO's EMA copy of ``proj``);
                None: ``proj`` itself (Eq. 2).

        Returns:
            scalar: cross-entropy between the global and each local distribution, averaged over the
            B images and V views. Updates the centre in training when centring.
        """
        if local_emb.dim() != 3 or local_emb.shape[1:] != global_emb.shape:
            raise ValueError(f"local embeddings {tuple(local_emb.shape)} must be (V, B, D) with (B, D) = "
                             f"{tuple(global_emb.shape)}")
        with torch.no_grad():
            t_logits = self.project(global_emb, teacher_proj)
            centred = t_logits - self.center if self.centering else t_logits
            target = F.softmax(centred / self.teacher_temp, dim=-1)  # (B, K)
        log_p = F.log_softmax(self.project(local_emb) / self.student_temp, dim=-1)  # (V, B, K)
        loss = -(target.unsqueeze(0) * log_p).sum(-1).mean()
        if self.training and self.centering:
            self._update_center(t_logits)
        return loss

    @torch.no_grad()
    def _update_center(self, t_logits: torch.Tensor) -> None:
        batch_sum = t_logits.sum(0)
        count = torch.tensor(float(t_logits.shape[0]), device=t_logits.device)
        if world_size() > 1:
            dist.all_reduce(batch_sum)
            dist.all_reduce(count)
        m = self.center_momentum
        self.center.mul_(m).add_(batch_sum / count, alpha=1 - m)


def dino_teacher_momentum(step: int, total_steps: int, base: float = 0.996) -> float:
    """DINO's teacher momentum at ``step`` of ``total_steps``: ``base`` rising to 1 along a half cosine,
    ``1 - (1 - base) (cos(pi step / total) + 1) / 2``."""
    progress = min(max(step, 0), total_steps) / max(total_steps, 1)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * progress) + 1.0) / 2.0


@torch.no_grad()
def ema_update_(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student``, parameter by parameter (the two
    modules have the same structure); buffers are copied."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach().to(t.dtype), alpha=1.0 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers()):
        t.copy_(s)
