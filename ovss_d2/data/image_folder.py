"""Unlabeled images: a folder tree (ImageNet's ``train/<wnid>/*.JPEG`` or any layout) as a
detectron2 dataset, and the centre-crop mapper ZeroSeg trains with."""
import copy
import os
from typing import Dict, List, Optional

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T

from .dataset_mapper import DATASET_MAPPER_REGISTRY
from .io import read_image_rgb

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def list_images(root: str) -> List[str]:
    """Every image file under ``root`` (any depth), sorted by relative path; hidden folders skipped."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Image folder {root} does not exist.")
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        files += [os.path.join(dirpath, f) for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS)]
    return sorted(files, key=lambda f: os.path.relpath(f, root))


def register_image_folder(name: str, root: str, prepare_hint: str = "") -> None:
    """Register ``name``: records ``{"file_name", "image_id"}`` for every image under ``root``."""

    def load() -> List[Dict]:
        if not os.path.isdir(root):
            hint = f" {prepare_hint}" if prepare_hint else ""
            raise FileNotFoundError(f"Dataset {name!r}: image folder {root} does not exist.{hint}")
        files = list_images(root)
        if not files:
            raise FileNotFoundError(f"Dataset {name!r}: no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}.")
        return [{"file_name": f, "image_id": i} for i, f in enumerate(files)]

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(image_root=root, evaluator_type="none")


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
        from .teacher_cache import TeacherFeatureCache

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


def register_builtin_image_folders(root: Optional[str] = None) -> None:
    """ImageNet-1k training images without labels, as ZeroSeg trains (``imagenet_unlabeled_train``)."""
    root = root or os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))
    register_image_folder("imagenet_unlabeled_train", os.path.join(root, "imagenet", "train"),
                          "Put ILSVRC2012's train/<wnid>/*.JPEG folders there (see datasets/README.md).")


if "imagenet_unlabeled_train" not in DatasetCatalog.list():
    register_builtin_image_folders()
