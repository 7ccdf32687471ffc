#!/usr/bin/env python
"""COCO-Object (GroupViT's and ZeroSeg's COCO benchmark) from the COCO 2017 instance annotations:
background + the 80 object classes.

Input, in <root>/coco-stuff/ (the COCO root shared with prepare_coco_stuff.py):
  annotations/instances_val2017.json   annotations_trainval2017.zip, unzipped in coco-stuff/
  images/val2017/*.jpg                 val2017.zip, unzipped in coco-stuff/images/
Output:
  annotations_object_detectron2/val2017/*.png   0 = background, 1..80 = the object classes in COCO
                                                category-id order; a pixel covered by several objects
                                                takes the smallest one; crowd regions count

    python datasets/prepare_coco_object.py [--root $DETECTRON2_DATASETS] [--workers 8]
"""
import json
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovss_d2  # noqa: E402,F401
from ovss_d2.data.datasets import BENCHMARKS_BY_NAME, load_class_list  # noqa: E402
from ovss_d2.data.datasets.conversions import ConvertCocoObject  # noqa: E402
from ovss_d2.data.datasets.preparation import (Item, MissingInputError, RequiredInput, check_inputs,  # noqa: E402
                                               prepare_argument_parser, require_files, run_cli, run_preparation,
                                               summary)

SCRIPT = "datasets/prepare_coco_object.py"
ANNOTATIONS = ("annotations_trainval2017.zip", "http://images.cocodataset.org/annotations/annotations_trainval2017.zip")


def main(argv=None):
    args = prepare_argument_parser(__doc__).parse_args(argv)
    coco = os.path.join(args.root, "coco-stuff")
    ann_file = os.path.join(coco, "annotations", "instances_val2017.json")
    img_dir = os.path.join(coco, "images", "val2017")
    images_source = RequiredInput(img_dir, "val2017.zip", "http://images.cocodataset.org/zips/val2017.zip",
                                  f"unzip it into {os.path.join(coco, 'images')}")
    check_inputs([RequiredInput(ann_file, *ANNOTATIONS, f"unzip it into {coco} (it holds annotations/)"),
                  images_source])
    with open(ann_file) as f:
        data = json.load(f)

    classes = load_class_list("coco_object_81")
    expected = dict(zip(classes.raw_ids[1:], classes.names[1:]))
    found = {c["id"]: c["name"] for c in data.get("categories", [])}
    if found != expected:
        raise MissingInputError(f"{ann_file} does not hold the 80 COCO 2017 categories (found {len(found)}): take "
                                f"instances_val2017.json from {ANNOTATIONS[0]} ({ANNOTATIONS[1]}).")
    anns = defaultdict(list)
    for a in data["annotations"]:
        anns[a["image_id"]].append(a)
    records = sorted(data["images"], key=lambda r: r["file_name"])
    require_files([os.path.join(img_dir, r["file_name"]) for r in records], "val2017 images", images_source)

    spec = BENCHMARKS_BY_NAME["coco_object_81_val"]
    out = spec.gt_root(args.root)
    items = [Item(os.path.splitext(r["file_name"])[0], (os.path.join(img_dir, r["file_name"]),),
                  (os.path.join(out, os.path.splitext(r["file_name"])[0] + ".png"),),
                  payload=(r["height"], r["width"], anns.get(r["id"], [])))
             for r in records]
    category_to_id = {raw: i for i, raw in enumerate(classes.raw_ids) if i > 0}
    folders = [spec.output_folder(args.root)]
    result = run_preparation(items, ConvertCocoObject(category_to_id), folders, script=SCRIPT, workers=args.workers,
                             overwrite=args.overwrite, desc="COCO-Object val2017")
    print(summary(result, folders))


if __name__ == "__main__":
    sys.exit(run_cli(main))
