#!/usr/bin/env python
"""ViL-Seg + ST (the paper's Table 1): self-training on the target dataset's unlabelled training
images, as the zero-shot segmentation works ViL-Seg compares with do it (ZS3Net, CaGNet).

1. the trained ViL-Seg (``--weights``) segments every image of ``--images`` (a registered dataset,
   whose labels are not read, or a folder of images) with the vocabulary of ``DATASETS.TEST[0]``;
2. for each unseen class of that dataset (``--classes all``: every class), the ``--fraction`` most
   confident of the pixels predicted as that class over the whole image set become its
   pseudo-labels, every other pixel is ignored (:mod:`ovss_d2.modeling.self_training`); written to
   ``OUTPUT_DIR/pseudo_labels/`` with a list ``pseudo_labels.json`` and the per-class thresholds;
3. the model is fine-tuned on them (``MODEL.VIL_SEG.SELF_TRAINING True``: per-pixel cross-entropy)
   and evaluated on ``DATASETS.TEST`` as train_net does.

    python tools/vil_seg_self_train.py --config-file configs/vil_seg/vil_seg_vitb16_self_training_voc.yaml \\
        --weights output/vil_seg/vitb16_cc12m/model_final.pth --images /data/VOC2012/train_images [KEY VALUE ...]

``--num-gpus N`` fine-tunes on N processes (pseudo-labelling runs on the main process first).
``--pseudo-labels-only`` stops after step 2.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovss_d2  # noqa: F401,E402  (compat shims + registration; must precede detectron2 imports)
import torch  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402

from ovss_d2.checkpoint import OVSSCheckpointer  # noqa: E402
from ovss_d2.data.dataset_mapper import SemSegDatasetMapper  # noqa: E402
from ovss_d2.data.image_folder import list_images  # noqa: E402
from ovss_d2.data.io import read_label, save_label  # noqa: E402
from ovss_d2.engine import OVSSTrainer, launch, load_config, setup  # noqa: E402
from ovss_d2.modeling.self_training import ConfidentPixelSelector, quantize_confidence  # noqa: E402

LIST_FILE = "pseudo_labels.json"


def image_records(images: str):
    """``images``: a registered dataset name (its records' ``file_name``) or a folder of images."""
    if images in DatasetCatalog.list():
        return [{"file_name": d["file_name"]} for d in DatasetCatalog.get(images)]
    if os.path.isdir(images):
        return [{"file_name": f} for f in list_images(images)]
    raise FileNotFoundError(f"--images {images!r} is neither a registered dataset nor a folder of images: give the "
                            "target's training images (their labels are never read).")


def target_classes(cfg, which: str):
    """(vocabulary, ids of the classes that get pseudo-labels) from DATASETS.TEST[0]'s metadata."""
    if not cfg.DATASETS.TEST:
        raise ValueError("DATASETS.TEST[0] must name the target benchmark (its vocabulary and unseen classes).")
    meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
    names = list(meta.stuff_classes)
    if which == "all":
        return names, list(range(len(names)))
    unseen = list(getattr(meta, "unseen_classes", []) or [])
    if not unseen:
        raise ValueError(f"{cfg.DATASETS.TEST[0]!r} has no unseen_classes: use --classes all.")
    return names, [names.index(c) for c in unseen]


def make_pseudo_labels(cfg, weights: str, images: str, fraction: float, which: str, out_dir: str) -> str:
    """Steps 1-2 of the module docstring. Returns the path of the list file."""
    names, classes = target_classes(cfg, which)
    model = build_model(cfg).eval()
    OVSSCheckpointer(model, strict=cfg.MODEL.WEIGHTS_STRICT).load(weights)
    model.use_dataset(cfg.DATASETS.TEST[0])
    mapper = SemSegDatasetMapper(cfg, is_train=False)
    records = image_records(images)
    selector = ConfidentPixelSelector(len(names), classes, fraction)
    raw_dir, label_dir = os.path.join(out_dir, "predictions"), os.path.join(out_dir, "pseudo_labels")
    os.makedirs(raw_dir, exist_ok=True)
    os.makedirs(label_dir, exist_ok=True)
    with torch.no_grad():  # pass 1: predictions and confidence histograms
        for i, rec in enumerate(records):
            probs = model([mapper(dict(rec))])[0]["sem_seg"]
            pred, level = quantize_confidence(probs)
            selector.add(pred, level)
            save_label(pred.numpy(), 65535, os.path.join(raw_dir, f"{i:07d}_pred.png"))
            save_label(level.numpy(), 65535, os.path.join(raw_dir, f"{i:07d}_level.png"))
    thresholds = selector.thresholds()
    ignore = cfg.MODEL.SEM_SEG_IGNORE_VALUE
    entries, kept = [], torch.zeros(len(names), dtype=torch.long)
    for i, rec in enumerate(records):  # pass 2: the labels
        pred = torch.from_numpy(read_label(os.path.join(raw_dir, f"{i:07d}_pred.png")).astype("int64"))
        level = torch.from_numpy(read_label(os.path.join(raw_dir, f"{i:07d}_level.png")).astype("int64"))
        label = selector.pseudo_label(pred, level, thresholds, ignore)
        kept += torch.bincount(label[label != ignore], minlength=len(names))
        path = os.path.join(label_dir, f"{i:07d}.png")
        save_label(label.numpy(), len(names), path)
        entries.append({"file_name": rec["file_name"], "sem_seg_file_name": path, "image_id": i})
    list_file = os.path.join(out_dir, LIST_FILE)
    with open(list_file, "w") as fh:
        json.dump({"classes": names, "ignore_label": ignore, "records": entries}, fh)
    with open(os.path.join(out_dir, "pseudo_label_thresholds.json"), "w") as fh:
        json.dump({names[c]: {"threshold_level": int(thresholds[c]), "levels": selector.levels,
                              "predicted_pixels": int(selector.hist[selector.classes.index(c)].sum()),
                              "pseudo_labelled_pixels": int(kept[c])} for c in classes}, fh, indent=1)
    return list_file


def register_pseudo_labels(name: str, list_file: str) -> None:
    """Register the pseudo-labelled images of ``list_file`` as the segmentation dataset ``name``."""
    if not os.path.isfile(list_file):
        raise FileNotFoundError(f"{list_file} does not exist: run tools/vil_seg_self_train.py without "
                                "--skip-pseudo-labels first.")
    with open(list_file) as fh:
        spec = json.load(fh)
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, lambda: [dict(r) for r in spec["records"]])
    MetadataCatalog.get(name).set(stuff_classes=spec["classes"], ignore_label=spec["ignore_label"],
                                  evaluator_type="sem_seg")


def fine_tune(args, name: str, list_file: str):
    """Step 3, in every training process: train on the pseudo-labels as train_net does; returns the
    evaluation on DATASETS.TEST after the last iteration."""
    register_pseudo_labels(name, list_file)
    trainer = OVSSTrainer(setup(args))
    trainer.resume_or_load(resume=False)
    trainer.train()
    return getattr(trainer, "_last_eval_results", None)


def main(argv=None):
    from detectron2.engine import default_argument_parser

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", required=True, help="the trained ViL-Seg checkpoint")
    parser.add_argument("--images", required=True, help="target training images: registered dataset or folder")
    parser.add_argument("--fraction", type=float, default=0.75,
                        help="share of each class's predicted pixels kept (ours; ZS3Net's top-p rule)")
    parser.add_argument("--classes", choices=("unseen", "all"), default="unseen")
    parser.add_argument("--num-gpus", type=int, default=1)
    parser.add_argument("--pseudo-labels-only", action="store_true")
    parser.add_argument("--skip-pseudo-labels", action="store_true", help="reuse OUTPUT_DIR's pseudo-labels")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    if not cfg.MODEL.VIL_SEG.SELF_TRAINING:
        raise ValueError(f"{args.config_file}: set MODEL.VIL_SEG.SELF_TRAINING True (e.g. "
                         "configs/vil_seg/vil_seg_vitb16_self_training_voc.yaml).")
    out_dir = cfg.OUTPUT_DIR
    os.makedirs(out_dir, exist_ok=True)
    list_file = os.path.join(out_dir, LIST_FILE)
    if not args.skip_pseudo_labels:
        list_file = make_pseudo_labels(cfg, args.weights, args.images, args.fraction, args.classes, out_dir)
        print(f"pseudo-labels: {list_file}")
    if args.pseudo_labels_only:
        return list_file
    name = f"{cfg.DATASETS.TEST[0]}_pseudo_labels"
    train_args = default_argument_parser().parse_args(["--config-file", args.config_file, *args.opts,
                                                       "MODEL.WEIGHTS", args.weights, "DATASETS.TRAIN", f"('{name}',)"])
    train_args.num_gpus = args.num_gpus
    if args.num_gpus == 1:
        return fine_tune(train_args, name, list_file)
    launch(fine_tune, args.num_gpus, dist_url="auto", args=(train_args, name, list_file))


if __name__ == "__main__":
    main()
