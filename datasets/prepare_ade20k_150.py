#!/usr/bin/env python
"""ADE20K-150 (the SceneParsing benchmark, ADEChallengeData2016) validation -> contiguous labels.

Input: ADEChallengeData2016.zip unpacked in <root>:
  ADEChallengeData2016/images/validation/ADE_val_*.jpg        2000 images
  ADEChallengeData2016/annotations/validation/ADE_val_*.png   grey PNG: 0 "other", 1..150
Output:
  ADEChallengeData2016/annotations_detectron2/validation/ADE_val_*.png   0..149; 255 = other

    python datasets/prepare_ade20k_150.py [--root $DETECTRON2_DATASETS] [--workers 8]
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

SCRIPT = "datasets/prepare_ade20k_150.py"
ARCHIVE = "ADEChallengeData2016.zip"
URL = "http://data.csail.mit.edu/places/ADEchallenge/ADEChallengeData2016.zip"
NUM_VAL = 2000


def main(argv=None):
    args = prepare_argument_parser(__doc__).parse_args(argv)
    ade = os.path.join(args.root, "ADEChallengeData2016")

    def source(path):
        return RequiredInput(path, ARCHIVE, URL, f"unpack it in {args.root}")

    ann_dir = os.path.join(ade, "annotations", "validation")
    img_dir = os.path.join(ade, "images", "validation")
    check_inputs([source(ann_dir), source(img_dir)])
    stems = sorted(f[:-4] for f in os.listdir(ann_dir) if f.endswith(".png"))
    if len(stems) != NUM_VAL:
        print(f"warning: {ann_dir} holds {len(stems)} label maps, the official release {NUM_VAL}: is {ARCHIVE} "
              "completely unpacked?", file=sys.stderr)
    require_files([os.path.join(img_dir, f"{s}.jpg") for s in stems], "validation images", source(img_dir))

    spec = BENCHMARKS_BY_NAME["openvocab_ade20k_150_val"]
    lut = build_lut({0: IGNORE_8BIT, **contiguous_mapping(load_class_list("ade20k_150").raw_ids)}, 256)
    out = spec.gt_root(args.root)
    items = [Item(s, (os.path.join(ann_dir, f"{s}.png"),), (os.path.join(out, f"{s}.png"),)) for s in stems]
    folders = [spec.output_folder(args.root)]
    result = run_preparation(items, RemapLabels([lut], [np.uint8]), folders, script=SCRIPT, workers=args.workers,
                             overwrite=args.overwrite, desc="ADE20K-150 val")
    print(summary(result, folders))


if __name__ == "__main__":
    sys.exit(run_cli(main))
