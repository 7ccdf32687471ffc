#!/usr/bin/env python
"""PASCAL VOC 2012 val -> the 20-class labels (open-vocabulary PAS-20, ViL-Seg) and the 21-class
labels with background (ZeroSeg).

Input: VOCtrainval_11-May-2012.tar unpacked in <root>:
  VOCdevkit/VOC2012/JPEGImages/<id>.jpg
  VOCdevkit/VOC2012/SegmentationClass/<id>.png      palette PNG: 0 background, 1..20, 255 void border
  VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt  1449 ids
Output:
  VOCdevkit/VOC2012/annotations_detectron2/voc20_val/<id>.png  0..19; 255 = background and void
  VOCdevkit/VOC2012/annotations_detectron2/voc21_val/<id>.png  0 background, 1..20; 255 = void

    python datasets/prepare_voc.py [--root $DETECTRON2_DATASETS] [--workers 8]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import ovss_d2  # noqa: E402,F401
from ovss_d2.data.datasets import BENCHMARKS_BY_NAME, load_class_list  # noqa: E402
from ovss_d2.data.datasets.conversions import IGNORE_8BIT, RemapLabels, build_lut, contiguous_mapping  # noqa: E402
from ovss_d2.data.datasets.preparation import (Item, RequiredInput, check_inputs, prepare_argument_parser,  # noqa: E402
                                               read_id_list, require_files, run_cli, run_preparation, summary)

SCRIPT = "datasets/prepare_voc.py"
ARCHIVE = "VOCtrainval_11-May-2012.tar"
URL = "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar"


def main(argv=None):
    args = prepare_argument_parser(__doc__).parse_args(argv)
    voc = os.path.join(args.root, "VOCdevkit", "VOC2012")

    def source(path):
        return RequiredInput(path, ARCHIVE, URL, f"unpack it in {args.root} (it holds VOCdevkit/VOC2012/)")

    split = os.path.join(voc, "ImageSets", "Segmentation", "val.txt")
    check_inputs([source(os.path.join(voc, "JPEGImages")), source(os.path.join(voc, "SegmentationClass")),
                  source(split)])
    ids = read_id_list(split)
    require_files([os.path.join(voc, "JPEGImages", f"{i}.jpg") for i in ids], "val images", source(voc))
    labels = [os.path.join(voc, "SegmentationClass", f"{i}.png") for i in ids]
    require_files(labels, "val label maps (SegmentationClass)", source(voc))

    without_bg, with_bg = BENCHMARKS_BY_NAME["openvocab_voc_20_val"], BENCHMARKS_BY_NAME["voc_21_val"]
    lut20 = build_lut({0: IGNORE_8BIT, 255: IGNORE_8BIT, **contiguous_mapping(load_class_list("voc_20").raw_ids)}, 256)
    lut21 = build_lut({255: IGNORE_8BIT, **contiguous_mapping(load_class_list("voc_21").raw_ids)}, 256)
    out20, out21 = without_bg.gt_root(args.root), with_bg.gt_root(args.root)
    items = [Item(i, (lab,), (os.path.join(out20, f"{i}.png"), os.path.join(out21, f"{i}.png")))
             for i, lab in zip(ids, labels)]
    folders = [without_bg.output_folder(args.root), with_bg.output_folder(args.root)]
    result = run_preparation(items, RemapLabels([lut20, lut21], [np.uint8, np.uint8]), folders, script=SCRIPT,
                             workers=args.workers, overwrite=args.overwrite, desc="VOC 2012 val")
    print(summary(result, folders))


if __name__ == "__main__":
    sys.exit(run_cli(main))
