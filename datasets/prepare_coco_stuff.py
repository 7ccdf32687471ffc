#!/usr/bin/env python
"""COCO-Stuff (164k, COCO 2017 images) -> the 171 contiguous classes of the open-vocabulary protocol
(train on train2017; val2017 also serves ViL-Seg's COCO-Stuff split).

Input, in <root>/coco-stuff/:
  images/train2017/*.jpg, images/val2017/*.jpg   train2017.zip, val2017.zip (cocodataset.org)
  annotations/train2017/*.png, annotations/val2017/*.png
                                                 stuffthingmaps_trainval2017.zip: grey PNGs with the
                                                 0-based COCO-Stuff id (0 person .. 181 wood), 255 unlabeled
Output:
  annotations_detectron2/{train2017,val2017}/*.png   0..170; 255 = unlabeled

    python datasets/prepare_coco_stuff.py [--root $DETECTRON2_DATASETS] [--splits val2017 train2017] [--workers 8]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import ovss_d2  # noqa: E402,F401
from ovss_d2.data.datasets import BENCHMARKS_BY_NAME, load_class_list  # noqa: E402
from ovss_d2.data.datasets.conversions import IGNORE_8BIT, RemapLabels, build_lut, contiguous_mapping  # noqa: E402
from ovss_d2.data.datasets.preparation import (Item, RequiredInput, check_inputs, prepare_argument_parser,  # noqa: E402
                                               require_files, run_cli, run_preparation, summary)

SCRIPT = "datasets/prepare_coco_stuff.py"
SPLITS = {"train2017": ("openvocab_coco_stuff_171_train", 118287), "val2017": ("openvocab_coco_stuff_171_val", 5000)}
MAPS = ("stuffthingmaps_trainval2017.zip",
        "http://calvin.inf.ed.ac.uk/wp-content/uploads/data/cocostuffdataset/stuffthingmaps_trainval2017.zip")


def main(argv=None):
    parser = prepare_argument_parser(__doc__)
    parser.add_argument("--splits", nargs="+", choices=sorted(SPLITS), default=["val2017", "train2017"])
    args = parser.parse_args(argv)
    coco = os.path.join(args.root, "coco-stuff")
    lut = build_lut({IGNORE_8BIT: IGNORE_8BIT, **contiguous_mapping(load_class_list("coco_stuff_171").raw_ids)}, 256)

    def maps(path):
        return RequiredInput(path, *MAPS, f"unzip it into {os.path.join(coco, 'annotations')}")

    def images(path, split):
        return RequiredInput(path, f"{split}.zip", f"http://images.cocodataset.org/zips/{split}.zip",
                             f"unzip it into {os.path.join(coco, 'images')}")

    check_inputs([x for s in args.splits for x in (maps(os.path.join(coco, "annotations", s)),
                                                   images(os.path.join(coco, "images", s), s))])
    for split in args.splits:
        name, expected = SPLITS[split]
        ann_dir, img_dir = os.path.join(coco, "annotations", split), os.path.join(coco, "images", split)
        stems = sorted(f[:-4] for f in os.listdir(ann_dir) if f.endswith(".png"))
        if len(stems) != expected:
            print(f"warning: {ann_dir} holds {len(stems)} label maps, the official release {expected}: is "
                  f"{MAPS[0]} completely unpacked?", file=sys.stderr)
        require_files([os.path.join(img_dir, f"{s}.jpg") for s in stems], f"{split} images", images(img_dir, split))
        spec = BENCHMARKS_BY_NAME[name]
        out = spec.gt_root(args.root)
        items = [Item(s, (os.path.join(ann_dir, f"{s}.png"),), (os.path.join(out, f"{s}.png"),)) for s in stems]
        folders = [spec.output_folder(args.root)]
        result = run_preparation(items, RemapLabels([lut], [np.uint8]), folders, script=SCRIPT,
                                 workers=args.workers, overwrite=args.overwrite, desc=f"COCO-Stuff {split}")
        print(summary(result, folders))


if __name__ == "__main__":
    sys.exit(run_cli(main))
