"""The ViL-Seg training mapper (``INPUT.DATASET_MAPPER_NAME MultiCropCaptionMapper``): an
image-caption record -> the views its losses need.

* ``image``: the global view, a random resized crop (``INPUT.VIL_SEG.GLOBAL_SIZE``, area scale
  ``GLOBAL_SCALE``) with a random horizontal flip;
* ``local_views``: ``NUM_LOCAL`` low-resolution random resized crops of the whole image (multi-crop);
* ``iic_image``: the global view transformed by ``g``: random multiplicative and additive colour
  changes (per channel) and a horizontal flip with probability ``IIC_FLIP_PROB``;
  ``iic_flipped`` says whether ``g`` flipped, so the model can undo it on features;
* ``caption``.

Every random draw uses torch's global RNG, which the seeded training loader sets per sample.
"""
import copy
import logging
from typing import Dict, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import configurable
from torchvision.transforms import RandomResizedCrop
from torchvision.transforms import functional as TF

from .dataset_mapper import DATASET_MAPPER_REGISTRY
from .image_caption import read_caption_image

logger = logging.getLogger(__name__)

RATIO = (3.0 / 4.0, 4.0 / 3.0)


def random_resized_crop(image: torch.Tensor, size: int, scale: Sequence[float], flip_prob: float = 0.5
                        ) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, size, size) uint8: a crop of random area fraction in ``scale`` and
    aspect ratio in [3/4, 4/3], resized (antialiased), flipped with probability ``flip_prob``."""
    top, left, h, w = RandomResizedCrop.get_params(image, list(scale), list(RATIO))
    out = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    if torch.rand(()) < flip_prob:
        out = out.flip(-1)
    return out


def colour_flip_transform(image: torch.Tensor, mult: float, add: float, flip_prob: float
                          ) -> Tuple[torch.Tensor, bool]:
    """IIC's ``g``: ``x * a + b`` with a ~ U(1 - mult, 1 + mult), b ~ U(-add, add) * 255 drawn per
    channel, then a horizontal flip with probability ``flip_prob``. (3, H, W) uint8 in and out;
    returns the image and whether it was flipped."""
    a = 1 + (torch.rand(3, 1, 1) * 2 - 1) * mult
    b = (torch.rand(3, 1, 1) * 2 - 1) * add * 255
    out = (image.float() * a + b).round().clamp(0, 255).to(torch.uint8)
    flipped = bool(torch.rand(()) < flip_prob)
    return (out.flip(-1) if flipped else out), flipped


@DATASET_MAPPER_REGISTRY.register()
class MultiCropCaptionMapper:
    """Image-caption record -> ViL-Seg's training views (see the module docstring)."""

    @configurable
    def __init__(self, *, global_size: int = 224, global_scale: Sequence[float] = (0.4, 1.0), num_local: int = 6,
                 local_size: int = 96, local_scale: Sequence[float] = (0.05, 0.4), iic_color_mult: float = 0.2,
                 iic_color_add: float = 0.1, iic_flip_prob: float = 0.5):
        self.global_size, self.global_scale = global_size, tuple(global_scale)
        self.num_local, self.local_size, self.local_scale = num_local, local_size, tuple(local_scale)
        self.iic_color_mult, self.iic_color_add, self.iic_flip_prob = iic_color_mult, iic_color_add, iic_flip_prob
        logger.info(f"[MultiCropCaptionMapper] 1 global view {global_size}px scale {self.global_scale}, "
                    f"{num_local} local views {local_size}px scale {self.local_scale}, IIC copy: colour "
                    f"x(1+-{iic_color_mult}) +-{iic_color_add}, flip p={iic_flip_prob}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict:
        c = cfg.INPUT.VIL_SEG
        return {"global_size": c.GLOBAL_SIZE, "global_scale": c.GLOBAL_SCALE, "num_local": c.NUM_LOCAL,
                "local_size": c.LOCAL_SIZE, "local_scale": c.LOCAL_SCALE, "iic_color_mult": c.IIC_COLOR_MULT,
                "iic_color_add": c.IIC_COLOR_ADD, "iic_flip_prob": c.IIC_FLIP_PROB}

    def __call__(self, dataset_dict: Dict) -> Dict:
        d = copy.deepcopy(dataset_dict)
        if not d.get("caption"):
            raise ValueError(f"Image-caption record {d.get('file_name')} has no caption.")
        image = torch.from_numpy(np.ascontiguousarray(read_caption_image(d).transpose(2, 0, 1)))  # (3, H, W) uint8
        global_view = random_resized_crop(image, self.global_size, self.global_scale)
        local_views = [random_resized_crop(image, self.local_size, self.local_scale) for _ in range(self.num_local)]
        iic_image, flipped = colour_flip_transform(global_view, self.iic_color_mult, self.iic_color_add,
                                                   self.iic_flip_prob)
        d["image"] = global_view
        d["local_views"] = torch.stack(local_views) if local_views else \
            torch.zeros(0, 3, self.local_size, self.local_size, dtype=torch.uint8)
        d["iic_image"] = iic_image
        d["iic_flipped"] = flipped
        d["height"], d["width"] = self.global_size, self.global_size
        return d
