#!/usr/bin/env python
"""ADE20K-847 (the full ADE20K release, ADE20K_2021_17_01) validation -> 16-bit labels of the 847
classes of the open-vocabulary protocol, with images shrunk as the official recipe does.

Input: ADE20K_2021_17_01.zip (https://ade20k.csail.mit.edu/request_data/, sign-in needed)
unpacked in <root>:
  ADE20K_2021_17_01/index_ade20k.pkl                 the index: 'folder' and 'filename' per image
  ADE20K_2021_17_01/images/ADE/validation/<scene>/ADE_val_*.jpg
  ADE20K_2021_17_01/images/ADE/validation/<scene>/ADE_val_*_seg.png
                                                     RGB: class = R / 10 * 256 + G (0 = unannotated)
Output (2000 images):
  ADE20K_2021_17_01/images_detectron2/validation/ADE_val_*.jpg       short side <= 512 (bilinear)
  ADE20K_2021_17_01/annotations_detectron2/validation/ADE_val_*.png  16-bit: 0..846; 65535 = every
                                                                     other class and unannotated

    python datasets/prepare_ade20k_847.py [--root $DETECTRON2_DATASETS] [--workers 8]
"""
import os
import pickle
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovss_d2  # noqa: E402,F401
from ovss_d2.data.datasets import BENCHMARKS_BY_NAME, load_class_list  # noqa: E402
from ovss_d2.data.datasets.conversions import (IGNORE_16BIT, ConvertADE20KFull, build_lut,  # noqa: E402
                                               contiguous_mapping)
from ovss_d2.data.datasets.preparation import (Item, MissingInputError, RequiredInput, check_inputs,  # noqa: E402
                                               prepare_argument_parser, require_files, run_cli, run_preparation,
                                               summary)

SCRIPT = "datasets/prepare_ade20k_847.py"
ARCHIVE = "ADE20K_2021_17_01.zip"
URL = "https://ade20k.csail.mit.edu/request_data/"
NUM_VAL = 2000


def val_samples(index_file: str):
    """(folder, filename) of the validation images listed by the release's index."""
    with open(index_file, "rb") as f:
        index = pickle.load(f)
    if not isinstance(index, dict) or "folder" not in index or "filename" not in index:
        raise MissingInputError(f"{index_file} is not the ADE20K index (no 'folder' / 'filename' entries): "
                                f"take index_ade20k.pkl from {ARCHIVE} ({URL}).")
    return [(str(d), str(f)) for d, f in zip(index["folder"], index["filename"]) if str(f).startswith("ADE_val_")]


def main(argv=None):
    args = prepare_argument_parser(__doc__).parse_args(argv)
    ade = os.path.join(args.root, "ADE20K_2021_17_01")

    def source(path):
        return RequiredInput(path, ARCHIVE, URL, f"unpack it in {args.root}")

    index_file = os.path.join(ade, "index_ade20k.pkl")
    check_inputs([source(index_file), source(os.path.join(ade, "images", "ADE", "validation"))])
    samples = val_samples(index_file)
    if len(samples) != NUM_VAL:
        print(f"warning: {index_file} lists {len(samples)} validation images, the official release {NUM_VAL}.",
              file=sys.stderr)
    # the index's folders start with ADE20K_2021_17_01/: they are relative to the root
    images = [os.path.join(args.root, d, f) for d, f in samples]
    segs = [p[: -len(".jpg")] + "_seg.png" for p in images]
    require_files(images, "validation images", source(ade))
    require_files(segs, "validation *_seg.png", source(ade))

    spec = BENCHMARKS_BY_NAME["openvocab_ade20k_847_val"]
    img_out, gt_out = os.path.join(args.root, spec.image_dir), spec.gt_root(args.root)
    lut = build_lut(contiguous_mapping(load_class_list("ade20k_847").raw_ids), 2 ** 16, default=IGNORE_16BIT,
                    dtype="uint16")
    items = [Item(f[:-4], (img, seg), (os.path.join(img_out, f), os.path.join(gt_out, f[:-4] + ".png")))
             for (_, f), img, seg in zip(samples, images, segs)]
    folders = [spec.output_folder(args.root)]
    result = run_preparation(items, ConvertADE20KFull(lut), folders, script=SCRIPT, workers=args.workers,
                             overwrite=args.overwrite, desc="ADE20K-847 val")
    print(summary(result, folders))


if __name__ == "__main__":
    sys.exit(run_cli(main))
