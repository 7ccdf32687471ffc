"""ToyWorld as detectron2 datasets (generated into the cache on first use):

=============================  ==============================================================
``toyworld_train``             semantic segmentation, the training vocabulary (31 classes)
``toyworld_val``               the training vocabulary + 7 held-out pairs (38 classes, 7 unseen)
``toyworld_wide_val``          a larger world (68 classes; the 37 without a training mask are
                               unseen): the cross-dataset set, like COCO-Stuff -> ADE20K
``toyworld_captions_train``    image-caption pairs of the wide world without the held-out pairs
                               (``file_name``, ``caption``): the tiny CLIP's and ViL-Seg's data
``toyworld_unlabeled_train``   the same images without captions (ZeroSeg)
``toyworld_objects_val``       toyworld_val's 30 objects + ``background`` (stuff pixels), as in
                               the annotation-free protocols (ZeroSeg's COCO-Object); background
                               threshold 0.35 (COCO-Object's) unless the config says otherwise
=============================  ==============================================================
"""
import os
from typing import Dict, List, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from .generator import IMAGE_SIZE, default_root, generate, read_annotations
from .vocabulary import (BASE_OBJECTS, TRAIN_CLASSES, VAL_CLASSES, VAL_UNSEEN, WIDE_CLASSES, WIDE_UNSEEN,
                         is_object)

OBJECTS_WITH_BACKGROUND = ("background",) + BASE_OBJECTS
# registered name suffix -> (split on disk, vocabulary, unseen classes)
LABELLED = {
    "train": ("train", TRAIN_CLASSES, ()),
    "val": ("val", VAL_CLASSES, VAL_UNSEEN),
    "wide_val": ("wide_val", WIDE_CLASSES, WIDE_UNSEEN),
}


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


def _object_records(root: Optional[str]) -> List[Dict]:
    """val records whose labels are the objects + background ids (written next to val on first use)."""
    records = _records(root, "val")
    lut = np.full(256, 255, np.uint8)
    for i, name in enumerate(VAL_CLASSES):
        lut[i] = OBJECTS_WITH_BACKGROUND.index(name) if is_object(name) else 0
    out_dir = os.path.join(os.path.dirname(os.path.dirname(records[0]["sem_seg_file_name"])), "labels_objects")
    os.makedirs(out_dir, exist_ok=True)
    for r in records:
        path = os.path.join(out_dir, os.path.basename(r["sem_seg_file_name"]))
        if not os.path.isfile(path):
            tmp = f"{path}.{os.getpid()}.tmp.png"
            Image.fromarray(lut[np.asarray(Image.open(r["sem_seg_file_name"]))]).save(tmp)
            os.replace(tmp, path)
        r["sem_seg_file_name"] = path
    return records


def register_toyworld(root: Optional[str] = None, prefix: str = "toyworld") -> None:
    """Register the ToyWorld datasets under ``prefix`` for the data at ``root`` (default: the
    cache, ``$OVSS_D2_CACHE/toyworld``, looked up when the data is first read). ``import ovss_d2``
    registers the default ones (a built-in dataset source, ``ovss_d2.toyworld``)."""
    for suffix, (split, classes, unseen) in LABELLED.items():
        DatasetCatalog.register(f"{prefix}_{suffix}", lambda split=split: _records(root, split))
        MetadataCatalog.get(f"{prefix}_{suffix}").set(
            stuff_classes=list(classes), unseen_classes=list(unseen), ignore_label=255, evaluator_type="sem_seg")
    DatasetCatalog.register(f"{prefix}_objects_val", lambda: _object_records(root))
    MetadataCatalog.get(f"{prefix}_objects_val").set(
        stuff_classes=list(OBJECTS_WITH_BACKGROUND), unseen_classes=[c for c in VAL_UNSEEN if is_object(c)],
        ignore_label=255, evaluator_type="sem_seg", background_threshold=0.35)
    DatasetCatalog.register(f"{prefix}_captions_train", lambda: [
        {"file_name": r["file_name"], "caption": r["caption"], "image_id": r["image_id"]}
        for r in _records(root, "captions")])
    DatasetCatalog.register(f"{prefix}_unlabeled_train", lambda: [
        {"file_name": r["file_name"], "image_id": r["image_id"]} for r in _records(root, "captions")])
    for name in (f"{prefix}_captions_train", f"{prefix}_unlabeled_train"):
        MetadataCatalog.get(name).set(evaluator_type="none")

