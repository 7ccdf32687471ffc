"""The semantic-segmentation mapper shared by the methods: dataset dict -> model input."""
import copy
import logging
from typing import Dict, List, Optional, Union

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import transforms as T
from detectron2.utils.registry import Registry

from .augmentations import color_aug_ssd
from .io import read_image_rgb, read_label

logger = logging.getLogger(__name__)

DATASET_MAPPER_REGISTRY = Registry("DATASET_MAPPER")
DATASET_MAPPER_REGISTRY.__doc__ = """Training mappers by class name (``INPUT.DATASET_MAPPER_NAME``): each is
called as ``Mapper(cfg, is_train=True)`` and maps a dataset dict to a model input dict."""


def build_train_mapper(cfg):
    """The training mapper named by ``INPUT.DATASET_MAPPER_NAME``."""
    return DATASET_MAPPER_REGISTRY.get(cfg.INPUT.DATASET_MAPPER_NAME)(cfg, is_train=True)


def build_sem_seg_augmentations(cfg, is_train: bool) -> List[Union[T.Augmentation, T.Transform]]:
    """Test: shortest-edge resize. Training, in the order of the SED / ERR-Seg / CAT-Seg mappers:
    shortest-edge resize, crop with a per-category area limit, detectron2's ``ColorAugSSDTransform``
    (``INPUT.COLOR_AUG_SSD``), flip."""
    if not is_train:
        return [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, "choice")]
    augs = [T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TRAIN, cfg.INPUT.MAX_SIZE_TRAIN,
                                 cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)]
    if cfg.INPUT.CROP.ENABLED:
        augs.append(T.RandomCrop_CategoryAreaConstraint(
            cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE, cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA,
            cfg.MODEL.SEM_SEG_IGNORE_VALUE))
    if cfg.INPUT.COLOR_AUG_SSD:  # detectron2's transform, drawn per image; our images are RGB
        augs.append(color_aug_ssd("RGB"))
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal",
                                 vertical=cfg.INPUT.RANDOM_FLIP == "vertical"))
    return augs


@DATASET_MAPPER_REGISTRY.register()
class SemSegDatasetMapper:
    """Reads an image (and its label map in training), applies the augmentations
    (:func:`build_sem_seg_augmentations`), pads training samples to
    ``size_divisibility`` (image 128, label ignore) and returns ``image`` (3, H, W) uint8 RGB,
    ``sem_seg`` (H, W) int64 (training), ``height``, ``width``. Label maps of any bit depth are kept
    exact (16-bit for > 255 classes). Shared by every method trained on masks."""

    @configurable
    def __init__(self, is_train: bool, *, augmentations: List[T.Augmentation], ignore_value: int = 255,
                 size_divisibility: int = -1):
        self.is_train = is_train
        self.augmentations = T.AugmentationList(augmentations)
        self.ignore_value = ignore_value
        self.size_divisibility = size_divisibility
        logger.info(f"[SemSegDatasetMapper] {'train' if is_train else 'test'} augmentations: {augmentations}")

    @classmethod
    def from_config(cls, cfg, is_train: bool = True) -> Dict:
        return {"is_train": is_train, "augmentations": build_sem_seg_augmentations(cfg, is_train),
                "ignore_value": cfg.MODEL.SEM_SEG_IGNORE_VALUE, "size_divisibility": cfg.INPUT.SIZE_DIVISIBILITY}

    def __call__(self, dataset_dict: Dict) -> Optional[Dict]:
        d = copy.deepcopy(dataset_dict)
        image = read_image_rgb(d["file_name"])
        sem_seg = None
        if self.is_train:
            if "sem_seg_file_name" not in d:
                raise ValueError(f"Training sample {d['file_name']} has no sem_seg_file_name.")
            sem_seg = read_label(d["sem_seg_file_name"])
            if sem_seg.shape != image.shape[:2]:
                raise ValueError(f"Label map {d['sem_seg_file_name']} is {sem_seg.shape}, its image "
                                 f"{d['file_name']} is {image.shape[:2]}.")
            if sem_seg.dtype != np.uint8:  # detectron2 resizes non-uint8 maps as float: exact < 2**24
                sem_seg = sem_seg.astype(np.float32)
        d.setdefault("height", image.shape[0])
        d.setdefault("width", image.shape[1])
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        self.augmentations(aug_input)
        image = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        if sem_seg is not None:
            sem_seg = torch.as_tensor(aug_input.sem_seg.astype(np.int64))
            if self.size_divisibility > 0:
                h, w = image.shape[-2:]
                pad_h = (-h) % self.size_divisibility
                pad_w = (-w) % self.size_divisibility
                image = torch.nn.functional.pad(image, (0, pad_w, 0, pad_h), value=128)
                sem_seg = torch.nn.functional.pad(sem_seg, (0, pad_w, 0, pad_h), value=self.ignore_value)
            d["sem_seg"] = sem_seg
        d["image"] = image
        return d
