"""The cost map shared by every cost-aggregation method: cosine similarity of every pixel
embedding with every (class, template) text embedding."""
import torch
import torch.nn.functional as F


def cost_map(image_embed: torch.Tensor, text_embed: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of pixels and prompts.

    Args:
        image_embed: (B, D, H, W) pixel embeddings in the joint space.
        text_embed: (N, P, D) class x template embeddings shared by the batch, or (B, N, P, D)
            per image.

    Returns:
        (B, P, N, H, W) cosine similarities in [-1, 1] (template axis first, as the official SED /
        CAT-Seg cost volumes).
    """
    img = F.normalize(image_embed, dim=1)
    txt = F.normalize(text_embed, dim=-1).to(img.dtype)
    if txt.dim() == 3:
        return torch.einsum("bdhw,npd->bpnhw", img, txt)
    if txt.dim() == 4:
        return torch.einsum("bdhw,bnpd->bpnhw", img, txt)
    raise ValueError(f"text_embed must be (N, P, D) or (B, N, P, D), got {tuple(text_embed.shape)}")
