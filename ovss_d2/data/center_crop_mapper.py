"""ZeroSeg's training mapper (``INPUT.DATASET_MAPPER_NAME CenterCropImageMapper``): an unlabeled image
-> its central square, with the cached teacher features of that crop when a teacher cache is set."""
import copy
from typing import Dict, Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import transforms as T

from .dataset_mapper import DATASET_MAPPER_REGISTRY
from .io import read_image_rgb
from .teacher_cache import TeacherFeatureCache


def center_crop_transform(height: int, width: int, size: int) -> T.Transform:
    """Shortest edge resized to ``size`` (bilinear), then the central size x size crop."""
    resize = T.ResizeShortestEdge(size, max_size=10**6).get_transform(np.zeros((height, width, 1), np.uint8))
    h, w = resize.new_h, resize.new_w
    return T.TransformList([resize, T.CropTransform((w - size) // 2, (h - size) // 2, size, size)])


@DATASET_MAPPER_REGISTRY.register()
class CenterCropImageMapper:
    """Reads an image, resizes its shortest edge to ``size`` and takes the central square: ``image``
    (3, size, size) uint8 RGB. With a ``teacher_cache`` (:class:`TeacherFeatureCache`) it also adds
    ``teacher_features`` (V, D) float16, the cached teacher embeddings of the same crop."""

    @configurable
    def __init__(self, is_train: bool = True, *, size: int = 224, teacher_cache=None):
        self.is_train, self.size, self.teacher_cache = is_train, size, teacher_cache

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict:
        path = cfg.MODEL.ZEROSEG.TEACHER_CACHE if is_train else ""
        return {"is_train": is_train, "size": cfg.INPUT.CENTER_CROP_SIZE,
                "teacher_cache": TeacherFeatureCache.for_config(cfg, path) if path else None}

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        d = copy.deepcopy(dataset_dict)
        image = read_image_rgb(d["file_name"])
        image = center_crop_transform(*image.shape[:2], self.size).apply_image(image)
        d["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        d["height"], d["width"] = self.size, self.size
        if self.teacher_cache is not None:
            d["teacher_features"] = torch.from_numpy(np.array(self.teacher_cache[d["file_name"]]))
        return d
