"""ToyWorld as detectron2 datasets (generated into the cache on first use):

=============================  ==============================================================
``toyworld_train``             semantic segmentation, seen vocabulary (20 classes)
``toyworld_val``               semantic segmentation, full vocabulary (25), 5 unseen classes
``toyworld_captions_train``    image-caption pairs (``file_name``, ``caption``)
``toyworld_unlabeled_train``   images only (``file_name``)
=============================  ==============================================================
"""
import os
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from .generator import IMAGE_SIZE, default_root, generate, read_annotations
from .vocabulary import ALL_CLASSES, SEEN_CLASSES, UNSEEN_CLASSES


def _records(root: Optional[str], split: str) -> List[Dict]:
    root = generate(root or default_root())  # the cache is resolved when the data is first read
    out = []
    for i, r in enumerate(read_annotations(root, split)):
        out.append({
            "file_name": os.path.join(root, split, r["image"]),
            "sem_seg_file_name": os.path.join(root, split, r["label"]),
            "caption": r["caption"], "image_id": i, "height": IMAGE_SIZE, "width": IMAGE_SIZE,
        })
    return out


def register_toyworld(root: Optional[str] = None, prefix: str = "toyworld") -> None:
    """Register the four ToyWorld datasets under ``prefix`` for the data at ``root``
    (default: the cache, ``$OVSS_D2_CACHE/toyworld``, looked up when the data is first read)."""
    splits = {
        f"{prefix}_train": ("train", SEEN_CLASSES, ()),
        f"{prefix}_val": ("val", ALL_CLASSES, UNSEEN_CLASSES),
    }
    for name, (split, classes, unseen) in splits.items():
        DatasetCatalog.register(name, lambda split=split: _records(root, split))
        MetadataCatalog.get(name).set(
            stuff_classes=list(classes), unseen_classes=list(unseen), ignore_label=255,
            evaluator_type="sem_seg",
        )
    DatasetCatalog.register(f"{prefix}_captions_train", lambda: [
        {"file_name": r["file_name"], "caption": r["caption"], "image_id": r["image_id"]}
        for r in _records(root, "train")])
    DatasetCatalog.register(f"{prefix}_unlabeled_train", lambda: [
        {"file_name": r["file_name"], "image_id": r["image_id"]} for r in _records(root, "train")])
    for name in (f"{prefix}_captions_train", f"{prefix}_unlabeled_train"):
        MetadataCatalog.get(name).set(evaluator_type="none")


if "toyworld_train" not in DatasetCatalog.list():
    register_toyworld()
