"""Unlabeled images: a folder tree (ImageNet's ``train/<wnid>/*.JPEG`` or any layout) as a
detectron2 dataset (ZeroSeg trains on them with :class:`~ovss_d2.data.center_crop_mapper.CenterCropImageMapper`)."""
import os
from typing import Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from .datasets import add_builtin_datasets

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


def register_builtin_image_folders(root: Optional[str] = None) -> None:
    """ImageNet-1k training images without labels, as ZeroSeg trains (``imagenet_unlabeled_train``)."""
    root = root or os.path.expanduser(os.environ.get("DETECTRON2_DATASETS", "datasets"))
    register_image_folder("imagenet_unlabeled_train", os.path.join(root, "imagenet", "train"),
                          "Put ILSVRC2012's train/<wnid>/*.JPEG folders there (see datasets/README.md).")


add_builtin_datasets("image_folders", register_builtin_image_folders)  # registered by `import ovss_d2`
