#!/usr/bin/env python
"""COCO-Stuff (164k, COCO 2017 images) -> the 171 contiguous classes of the open-vocabulary protocol
(train on train2017), and for val2017 also the 182 classes of ViL-Seg's unseen-class split (SPNet's
and CaGNet's count: every 0-based COCO-Stuff id 0..181).

Input, in <root>/coco-stuff/:
  images/train2017/*.jpg, images/val2017/*.jpg   train2017.zip, val2017.zip (cocodataset.org)
  annotations/train2017/*.png, annotations/val2017/*.png
                                                 stuffthingmaps_trainval2017.zip: grey PNGs with the
                                                 0-based COCO-Stuff id (0 person .. 181 wood), 255 unlabeled
Output:
  annotations_detectron2/{train2017,val2017}/*.png   0..170; 255 = unlabeled
  annotations_detectron2/val2017_182/*.png           0..181 (the ids themselves, checked); 255 = unlabeled

    python datasets/prepare_coco_stuff.py [--root $DETECTRON2_DATASETS] [--splits val2017 train2017] [--workers 8]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import ovss_d2  # noqa: E402,F401
from ovss_d2.data.datasets import BENCHMARKS_BY_NAME, load_class_list  # noqa: E402
from ovss_d2.data.datasets.coco_stuff_inputs import SPLIT_SIZES, check_coco_stuff_inputs, stuffthingmaps_items  # noqa: E402
from ovss_d2.data.datasets.conversions import IGNORE_8BIT, RemapLabels, build_lut, contiguous_mapping  # noqa: E402
from ovss_d2.data.datasets.preparation import prepare_argument_parser, run_cli, run_preparation, summary  # noqa: E402

SCRIPT = "datasets/prepare_coco_stuff.py"
# split -> the registered datasets whose labels it writes, with their class lists
SPLITS = {"train2017": (("openvocab_coco_stuff_171_train", "coco_stuff_171"),),
          "val2017": (("openvocab_coco_stuff_171_val", "coco_stuff_171"),
                      ("vilseg_coco_stuff_unseen_val", "coco_stuff_182"))}


def main(argv=None):
    parser = prepare_argument_parser(__doc__)
    parser.add_argument("--splits", nargs="+", choices=sorted(SPLIT_SIZES), default=["val2017", "train2017"])
    args = parser.parse_args(argv)
    check_coco_stuff_inputs(args.root, args.splits)
    for split in args.splits:
        specs = [BENCHMARKS_BY_NAME[name] for name, _ in SPLITS[split]]
        luts = [build_lut({IGNORE_8BIT: IGNORE_8BIT, **contiguous_mapping(load_class_list(key).raw_ids)}, 256)
                for _, key in SPLITS[split]]
        items = stuffthingmaps_items(args.root, split, [s.gt_root(args.root) for s in specs])
        folders = [s.output_folder(args.root) for s in specs]
        result = run_preparation(items, RemapLabels(luts, [np.uint8] * len(luts)), folders, script=SCRIPT,
                                 workers=args.workers, overwrite=args.overwrite, desc=f"COCO-Stuff {split}")
        print(summary(result, folders))


if __name__ == "__main__":
    sys.exit(run_cli(main))
