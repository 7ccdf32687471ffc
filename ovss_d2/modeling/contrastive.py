"""Contrastive objectives for training an image encoder from image-caption pairs (ViL-Seg):

* :func:`cross_modal_info_nce`: InfoNCE between image and caption embeddings, the negatives of
  every rank included (ViL-Seg Eq. 3-4; CLIP's loss when symmetric);
* :class:`MultiCropDistillation`: the vision-based contrast between one global and several local
  views through a linear projection + softmax (ViL-Seg Eq. 2, multi-crop as in SwAV / DINO).
"""
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
    """ViL-Seg's vision-based contrast: ``H(Phi_a(e(x)), Phi_a(e(x_local)))``.

    ``Phi_a`` is a linear layer to ``out_dim`` (2048 in the paper) followed by a softmax, applied
    to L2-normalised image embeddings. The global view is the target: its distribution is computed
    without gradient, centred and sharpened (``teacher_temp``) as in DINO so that the shared
    projection can neither collapse to one output nor to the uniform distribution (the paper names
    none of these details; they are DINO's defaults). Each local view's distribution at
    ``student_temp`` is trained towards it by cross-entropy.

    Args:
        in_dim: embedding dimension D.
        out_dim: projection size K.
        teacher_temp, student_temp: softmax temperatures of the global / local branches.
        center_momentum: EMA momentum of the centre (mean global logits over all ranks' batches).
    """

    def __init__(self, in_dim: int, out_dim: int = 2048, teacher_temp: float = 0.04, student_temp: float = 0.1,
                 center_momentum: float = 0.9):
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)
        self.teacher_temp, self.student_temp, self.center_momentum = teacher_temp, student_temp, center_momentum
        self.register_buffer("center", torch.zeros(out_dim))

    def project(self, emb: torch.Tensor) -> torch.Tensor:
        """(..., D) embeddings -> (..., K) float32 logits of Phi_a (before the softmax)."""
        return self.proj(F.normalize(emb.float(), dim=-1)).float()

    def forward(self, global_emb: torch.Tensor, local_emb: torch.Tensor) -> torch.Tensor:
        """
        Args:
            global_emb: (B, D) embeddings of the global views.
            local_emb: (V, B, D) embeddings of the V local views of the same images.

        Returns:
            scalar: cross-entropy between the global and each local distribution, averaged over the
            B images and V views. Updates the centre in training.
        """
        if local_emb.dim() != 3 or local_emb.shape[1:] != global_emb.shape:
            raise ValueError(f"local embeddings {tuple(local_emb.shape)} must be (V, B, D) with (B, D) = "
                             f"{tuple(global_emb.shape)}")
        with torch.no_grad():
            t_logits = self.project(global_emb)
            target = F.softmax((t_logits - self.center) / self.teacher_temp, dim=-1)  # (B, K)
        log_p = F.log_softmax(self.project(local_emb) / self.student_temp, dim=-1)  # (V, B, K)
        loss = -(target.unsqueeze(0) * log_p).sum(-1).mean()
        if self.training:
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
