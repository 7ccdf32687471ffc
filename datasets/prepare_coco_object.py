#!/usr/bin/env python
"""COCO-Object (GroupViT's and ZeroSeg's COCO benchmark), built as GroupViT's
convert_dataset/convert_coco_object.py builds it: from COCO-Stuff's stuffthingmaps, the 80 thing
classes become 1..80 and everything else (the 91 stuff classes and unlabeled) background 0.

Input, in <root>/coco-stuff/ (shared with prepare_coco_stuff.py):
  annotations/val2017/*.png   stuffthingmaps_trainval2017.zip: grey PNGs with the 0-based COCO-Stuff
                              id (0 person .. 89 toothbrush, 91 banner .. 181 wood), 255 unlabeled
  images/val2017/*.jpg        val2017.zip
Output:
  annotations_detectron2/val2017_object/*.png   0 = background, 1..80 = the thing classes in COCO
                                                category order (no ignored pixel)

    python datasets/prepare_coco_object.py [--root $DETECTRON2_DATASETS] [--workers 8]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import ovss_d2  # noqa: E402,F401
from ovss_d2.data.datasets import BENCHMARKS_BY_NAME, load_class_list  # noqa: E402
from ovss_d2.data.datasets.coco_stuff_inputs import check_coco_stuff_inputs, stuffthingmaps_items  # noqa: E402
from ovss_d2.data.datasets.conversions import RemapLabels, build_lut, contiguous_mapping  # noqa: E402
from ovss_d2.data.datasets.preparation import prepare_argument_parser, run_cli, run_preparation, summary  # noqa: E402

SCRIPT = "datasets/prepare_coco_object.py"
STUFF_IDS = range(91, 182)


def object_lut() -> np.ndarray:
    """(256,) table: the 80 thing ids -> 1..80, stuff ids and 255 -> 0; the 11 thing ids COCO never
    annotates and 182..254 are not in the format (an error when met)."""
    things = load_class_list("coco_object_81").raw_ids[1:]  # class 0 is background
    return build_lut({**{s: 0 for s in STUFF_IDS}, 255: 0, **contiguous_mapping(things, offset=1)}, 256)


def main(argv=None):
    args = prepare_argument_parser(__doc__).parse_args(argv)
    check_coco_stuff_inputs(args.root, ["val2017"])
    spec = BENCHMARKS_BY_NAME["coco_object_81_val"]
    items = stuffthingmaps_items(args.root, "val2017", [spec.gt_root(args.root)])
    folders = [spec.output_folder(args.root)]
    result = run_preparation(items, RemapLabels([object_lut()], [np.uint8]), folders, script=SCRIPT,
                             workers=args.workers, overwrite=args.overwrite, desc="COCO-Object val2017")
    print(summary(result, folders))


if __name__ == "__main__":
    sys.exit(run_cli(main))
