"""The COCO-Stuff download that datasets/prepare_coco_stuff.py and datasets/prepare_coco_object.py
both read: COCO 2017 images and the stuffthingmaps label PNGs, under ``<root>/coco-stuff/``."""
import os
import sys
from typing import List, Sequence

from .preparation import Item, RequiredInput, check_inputs, require_files

MAPS = ("stuffthingmaps_trainval2017.zip",
        "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip")
SPLIT_SIZES = {"train2017": 118287, "val2017": 5000}


def _maps(coco: str, path: str) -> RequiredInput:
    return RequiredInput(path, *MAPS, f"unzip it into {os.path.join(coco, 'annotations')}")


def _images(coco: str, path: str, split: str) -> RequiredInput:
    return RequiredInput(path, f"{split}.zip", f"http://images.cocodataset.org/zips/{split}.zip",
                         f"unzip it into {os.path.join(coco, 'images')}")


def check_coco_stuff_inputs(root: str, splits: Sequence[str]) -> None:
    """MissingInputError naming each missing label or image folder of ``splits`` and its archive."""
    coco = os.path.join(root, "coco-stuff")
    check_inputs([x for s in splits for x in (_maps(coco, os.path.join(coco, "annotations", s)),
                                              _images(coco, os.path.join(coco, "images", s), s))])


def stuffthingmaps_items(root: str, split: str, out_dirs: Sequence[str]) -> List[Item]:
    """One :class:`Item` per label map of ``coco-stuff/annotations/<split>`` (input: the grey PNG of
    0-based COCO-Stuff ids, 255 unlabeled), writing ``<out_dir>/<stem>.png`` for each of ``out_dirs``.
    Every label map needs its image (``images/<split>/<stem>.jpg``); a split with another count than
    the official release's gets a warning."""
    coco = os.path.join(root, "coco-stuff")
    ann_dir, img_dir = os.path.join(coco, "annotations", split), os.path.join(coco, "images", split)
    stems = sorted(f[:-4] for f in os.listdir(ann_dir) if f.endswith(".png"))
    if len(stems) != SPLIT_SIZES[split]:
        print(f"warning: {ann_dir} holds {len(stems)} label maps, the official release {SPLIT_SIZES[split]}: is "
              f"{MAPS[0]} completely unpacked?", file=sys.stderr)
    require_files([os.path.join(img_dir, f"{s}.jpg") for s in stems], f"{split} images",
                  _images(coco, img_dir, split))
    return [Item(s, (os.path.join(ann_dir, f"{s}.png"),), tuple(os.path.join(d, f"{s}.png") for d in out_dirs))
            for s in stems]
