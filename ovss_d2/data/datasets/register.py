"""Registering semantic-segmentation datasets (a folder of images and a folder of label maps)."""
import os
from typing import Optional, Sequence

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_sem_seg


def register_sem_seg_dataset(name: str, image_root: str, gt_root: str, class_names: Sequence[str], *,
                             ignore_label: int = 255, image_ext: str = ".jpg", gt_ext: str = ".png",
                             unseen_classes: Optional[Sequence[str]] = None, evaluator_type: str = "sem_seg",
                             prepare_hint: str = "", **metadata) -> None:
    """Register ``name`` with detectron2.

    Images ``image_root/<stem><image_ext>`` are paired with labels ``gt_root/<stem><gt_ext>``
    (labels hold contiguous class ids, ``ignore_label`` elsewhere; 16-bit PNG for > 255 classes).
    ``unseen_classes`` (a subset of ``class_names``) makes the evaluator report seen / unseen mIoU.
    """
    names = list(class_names)
    if unseen_classes:
        missing = [c for c in unseen_classes if c not in names]
        if missing:
            raise ValueError(f"unseen_classes of {name!r} not among its class names: {missing}")

    def load():
        for root in (image_root, gt_root):
            if not os.path.isdir(root):
                hint = f" Prepare it with: {prepare_hint}" if prepare_hint else " See datasets/README.md."
                raise FileNotFoundError(f"Dataset {name!r}: directory {root} does not exist.{hint}")
        return load_sem_seg(gt_root, image_root, gt_ext=gt_ext, image_ext=image_ext)

    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        stuff_classes=names, image_root=image_root, sem_seg_root=gt_root, ignore_label=ignore_label,
        evaluator_type=evaluator_type, unseen_classes=list(unseen_classes or []), **metadata,
    )
