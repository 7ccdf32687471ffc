#!/usr/bin/env python
"""PASCAL-Context val (5105 images of VOC 2010) from the .mat release -> the 459-class labels
(16-bit), the 59-class labels (open-vocabulary PC-59, ViL-Seg) and the 60-class labels with
background (ZeroSeg), all three from the same full-label ``LabelMap``.

Every image of ImageSets/Main/val.txt is converted. The registered PC-459, PC-59 and PC-60 splits
then leave out 2010_001606, as the methods' 5104-image list does (CAT-Seg / SED / ERR-Seg
datasets/pascalcontext_val.txt); ViL-Seg's split keeps all 5105 (see datasets/README.md).

Input, in <root>/VOCdevkit/VOC2010/:
  JPEGImages/<id>.jpg, ImageSets/Main/val.txt   VOCtrainval_03-May-2010.tar, unpacked in <root>
  trainval/<id>.mat                             trainval.tar.gz (the PASCAL-Context release), unpacked
                                                in VOCdevkit/VOC2010: field LabelMap (uint16), values
                                                1..459 = the classes of its labels.txt, 0 = unlabeled
Output, in VOCdevkit/VOC2010/annotations_detectron2/:
  pc459_val/<id>.png   16-bit: 0..458; 65535 = unlabeled
  pc59_val/<id>.png    0..58; 255 = unlabeled and the 400 other classes
  pc60_val/<id>.png    0 = background (unlabeled and the 400 other classes), 1..59

    python datasets/prepare_pascal_context.py [--root $DETECTRON2_DATASETS] [--variants 459 59 60] [--workers 8]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

import ovss_d2  # noqa: E402,F401
from ovss_d2.data.datasets import BENCHMARKS_BY_NAME, load_class_list  # noqa: E402
from ovss_d2.data.datasets.conversions import (IGNORE_8BIT, IGNORE_16BIT, RemapPascalContext, build_lut,  # noqa: E402
                                               contiguous_mapping)
from ovss_d2.data.datasets.preparation import (Item, RequiredInput, check_inputs, prepare_argument_parser,  # noqa: E402
                                               read_id_list, require_files, run_cli, run_preparation, summary)

SCRIPT = "datasets/prepare_pascal_context.py"
VOC2010 = ("VOCtrainval_03-May-2010.tar", "http://host.robots.ox.ac.uk/pascal/VOC/voc2010/VOCtrainval_03-May-2010.tar")
CONTEXT = ("trainval.tar.gz", "https://www.cs.stanford.edu/~roozbeh/pascal-context/trainval.tar.gz")
NUM_RAW = 460  # LabelMap values 0..459


def variants():
    """variant -> (dataset name, LUT over LabelMap values, label dtype)."""
    pc459, pc59, pc60 = (load_class_list(k) for k in ("pascal_context_459", "pascal_context_59", "pascal_context_60"))
    return {
        "459": ("openvocab_pcontext_459_val",
                build_lut({0: IGNORE_16BIT, **contiguous_mapping(pc459.raw_ids)}, NUM_RAW, dtype=np.uint16), np.uint16),
        "59": ("openvocab_pcontext_59_val", build_lut(contiguous_mapping(pc59.raw_ids), NUM_RAW, default=IGNORE_8BIT),
               np.uint8),
        "60": ("pcontext_60_val", build_lut(contiguous_mapping(pc60.raw_ids), NUM_RAW, default=0), np.uint8),
    }


def main(argv=None):
    parser = prepare_argument_parser(__doc__)
    parser.add_argument("--variants", nargs="+", choices=["459", "59", "60"], default=["459", "59", "60"])
    args = parser.parse_args(argv)
    voc = os.path.join(args.root, "VOCdevkit", "VOC2010")

    def voc_source(path):
        return RequiredInput(path, *VOC2010, f"unpack it in {args.root} (it holds VOCdevkit/VOC2010/)")

    def context_source(path):
        return RequiredInput(path, *CONTEXT, f"unpack it in {voc} (it holds trainval/*.mat)")

    split = os.path.join(voc, "ImageSets", "Main", "val.txt")
    check_inputs([voc_source(os.path.join(voc, "JPEGImages")), voc_source(split),
                  context_source(os.path.join(voc, "trainval"))])
    ids = read_id_list(split)
    images = [os.path.join(voc, "JPEGImages", f"{i}.jpg") for i in ids]
    mats = [os.path.join(voc, "trainval", f"{i}.mat") for i in ids]
    require_files(images, "val images", voc_source(voc))
    missing = set(require_files(mats, "val label files (trainval/*.mat)", context_source(voc), tolerance=0.01))
    if missing:
        print(f"warning: {len(missing)} val images have no trainval/*.mat and are left out: "
              f"{', '.join(sorted(missing)[:5])}", file=sys.stderr)

    chosen = [variants()[v] for v in args.variants]
    specs = [BENCHMARKS_BY_NAME[name] for name, _, _ in chosen]
    items = [Item(i, (mat, img), tuple(os.path.join(s.gt_root(args.root), f"{i}.png") for s in specs))
             for i, mat, img in zip(ids, mats, images) if mat not in missing]
    folders = [s.output_folder(args.root) for s in specs]
    convert = RemapPascalContext([lut for _, lut, _ in chosen], [dtype for _, _, dtype in chosen])
    result = run_preparation(items, convert, folders, script=SCRIPT, workers=args.workers, overwrite=args.overwrite,
                             desc="PASCAL-Context val")
    print(summary(result, folders))


if __name__ == "__main__":
    sys.exit(run_cli(main))
