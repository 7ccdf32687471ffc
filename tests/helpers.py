"""Shared test helpers: a tiny synthetic segmentation dataset, tiny configs, and the functions
run in spawned processes (they must be importable, hence not inside test modules)."""
import json
import logging
import os
import sys
from contextlib import contextmanager

import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import ovss_d2  # noqa: E402,F401
from detectron2.data import DatasetCatalog  # noqa: E402

from ovss_d2.data import register_sem_seg_dataset  # noqa: E402
from ovss_d2.engine import load_config  # noqa: E402

TINY_CLASSES = ["red square", "green field", "blue sky"]
COLORS = [(220, 30, 30), (30, 200, 40), (40, 60, 230)]


def shared_reference(name: str) -> str:
    """A file of ../shared/reference (the official checkpoint manifests): the tests that read it
    say so. CI has shared/ beside the clone; $OVSS_D2_SHARED points elsewhere."""
    import pytest

    for root in (os.environ.get("OVSS_D2_SHARED", ""), os.path.join(REPO, "..", "shared")):
        path = os.path.join(root, "reference", name)
        if root and os.path.isfile(path):
            return path
    pytest.skip(f"../shared/reference/{name} not found (set OVSS_D2_SHARED to the shared folder)")


@contextmanager
def log_records(logger_name: str):
    """The log records of one logger (``""``: the root logger) and its children within the block,
    INFO and above, whatever its level and propagation settings (detectron2's setup_logger turns
    propagation off)."""
    found = []
    handler = logging.Handler(logging.INFO)
    handler.emit = found.append
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield found
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def param_counts(model):
    """(total, trainable) parameter counts."""
    return (sum(p.numel() for p in model.parameters()),
            sum(p.numel() for p in model.parameters() if p.requires_grad))


def random_official_state_dict(manifest: str):
    """Random tensors with the keys and shapes of an official checkpoint manifest
    (reads ../shared/reference)."""
    import torch

    with open(shared_reference(manifest)) as f:
        shapes = json.load(f)
    g = torch.Generator().manual_seed(0)
    return {k: torch.randn(v, generator=g) if v else torch.randn((), generator=g) for k, v in shapes.items()}


def assert_official_checkpoint_is_strict(model, manifest: str, tmp_path, extra_key: str, missing_key: str,
                                         missing_ours: str):
    """Loading an official-layout checkpoint (random, from ``manifest``) through the checkpointer:
    one extra tensor (``extra_key``, which maps to nothing) is an error naming it, and so is a
    missing one (``missing_key``; the error names our tensor, ``missing_ours``)."""
    import re

    import pytest
    import torch

    from ovss_d2.checkpoint import CheckpointMismatchError, OVSSCheckpointer
    from ovss_d2.modeling.converters import UnmappedKeyError

    official = random_official_state_dict(manifest)
    torch.save({"model": dict(official, **{extra_key: torch.zeros(3)})}, tmp_path / "extra.pth")
    with pytest.raises(UnmappedKeyError, match=re.escape(extra_key)):
        OVSSCheckpointer(model).load(str(tmp_path / "extra.pth"))
    del official[missing_key]
    torch.save({"model": official}, tmp_path / "missing.pth")
    with pytest.raises(CheckpointMismatchError, match=re.escape(missing_ours)):
        OVSSCheckpointer(model).load(str(tmp_path / "missing.pth"))


def make_tiny_dataset(root: str, n: int = 8, size=(48, 64), seed: int = 0, ignore_border: bool = True):
    """n images: a blue-sky top, a green-field bottom and a red square, labels 0..2, and (optional)
    a 2-pixel ignore border. Returns (image_dir, gt_dir)."""
    rng = np.random.default_rng(seed)
    img_dir, gt_dir = os.path.join(root, "images"), os.path.join(root, "labels")
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(gt_dir, exist_ok=True)
    h, w = size
    for i in range(n):
        label = np.full((h, w), 1, np.uint8)
        horizon = int(rng.integers(h // 4, h // 2))
        label[:horizon] = 2
        s = int(rng.integers(8, 16))
        y, x = int(rng.integers(0, h - s)), int(rng.integers(0, w - s))
        label[y:y + s, x:x + s] = 0
        img = np.array(COLORS, np.float32)[label] + rng.normal(0, 12, (h, w, 3))
        if ignore_border:
            label[:2], label[-2:], label[:, :2], label[:, -2:] = 255, 255, 255, 255
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(os.path.join(img_dir, f"{i:03d}.jpg"))
        Image.fromarray(label).save(os.path.join(gt_dir, f"{i:03d}.png"))
    return img_dir, gt_dir


def register_tiny(name: str, root: str, n: int = 8, unseen=None, ignore_border: bool = True):
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        from detectron2.data import MetadataCatalog

        MetadataCatalog.remove(name)
    img_dir, gt_dir = make_tiny_dataset(root, n=n, ignore_border=ignore_border)
    register_sem_seg_dataset(name, img_dir, gt_dir, TINY_CLASSES, unseen_classes=unseen)
    return name


def tiny_opts(output_dir: str, train="tiny_train", test="tiny_val", clip="ovss-tiny-vit", iters=6, batch=2,
              extra=()):
    return [
        "MODEL.CLIP.NAME", clip, "MODEL.CLIP.PRETRAINED", "none", "MODEL.CLIP.FREEZE_IMAGE", "False",
        "MODEL.TEXT.TEMPLATES", "photo_of_a", "MODEL.DEVICE", "cpu",
        "DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{test}',)",
        "INPUT.MIN_SIZE_TRAIN", "(48,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.CROP.SIZE", "(32, 32)",
        "INPUT.MIN_SIZE_TEST", "48", "INPUT.MAX_SIZE_TEST", "128",
        "SOLVER.IMS_PER_BATCH", str(batch), "SOLVER.MAX_ITER", str(iters), "SOLVER.BASE_LR", "0.01",
        "SOLVER.CLIP_LR_MULTIPLIER", "1.0", "SOLVER.CHECKPOINT_PERIOD", "3", "SOLVER.WARMUP_ITERS", "0",
        "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", output_dir,
    ] + list(extra)


def tiny_cfg(output_dir: str, **kwargs):
    return load_config(os.path.join(REPO, "configs", "Base-OVSS.yaml"), tiny_opts(output_dir, **kwargs))


def train_args(output_dir: str, resume=False, num_gpus=1, **kwargs):
    from detectron2.engine import default_argument_parser

    argv = ["--config-file", os.path.join(REPO, "configs", "Base-OVSS.yaml"), "--num-gpus", str(num_gpus)]
    if resume:
        argv.append("--resume")
    return default_argument_parser().parse_args(argv + tiny_opts(output_dir, **kwargs))


def register_tiny_splits(data_root: str):
    # no ignore pixels in training: every crop then has as many labelled pixels, so a per-pixel
    # mean loss over two processes equals the mean over one process's batch of two
    register_tiny("tiny_train", os.path.join(data_root, "train"), ignore_border=False)
    register_tiny("tiny_val", os.path.join(data_root, "val"), n=4, unseen=["blue sky"])


def train_worker(data_root: str, args):
    """Runs in every spawned process: register the datasets, then train_net.main."""
    register_tiny_splits(data_root)
    import train_net

    train_net.main(args)


def many_class_names(n: int):
    return [f"class {i}" for i in range(n)]


def register_label_folder(name: str, root: str, num_classes: int, unseen=None):
    """Register already written ``root/images/*.jpg`` + ``root/labels/*.png`` (16-bit when needed)."""
    from detectron2.data import MetadataCatalog

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_sem_seg_dataset(name, os.path.join(root, "images"), os.path.join(root, "labels"),
                             many_class_names(num_classes), unseen_classes=unseen)


def evaluator_worker(out_file: str, dataset_name: str, root: str, num_classes: int, unseen, preds_file: str,
                     ignore_label: int = 255):
    """Each rank evaluates its share (every world-size-th image) of saved predictions."""
    import torch
    from detectron2.utils import comm

    from ovss_d2.evaluation import OpenVocabSemSegEvaluator

    register_label_folder(dataset_name, root, num_classes, unseen)
    preds = torch.load(preds_file)
    ev = OpenVocabSemSegEvaluator(dataset_name, distributed=True, ignore_label=ignore_label)
    ev.reset()
    dicts = sorted(DatasetCatalog.get(dataset_name), key=lambda d: d["file_name"])
    for i in range(comm.get_rank(), len(dicts), comm.get_world_size()):
        ev.process([dicts[i]], [{"sem_seg": preds[i]}])
    res = ev.evaluate()
    if comm.is_main_process():
        with open(out_file, "w") as f:
            json.dump(res["sem_seg"], f)


def vilseg_collectives_worker(in_file: str, out_dir: str):
    """ViL-Seg's cross-rank losses: each rank takes its equal share of the pairs / pixels saved in
    ``in_file``, computes the InfoNCE (both directions) and the IIC loss with the gathered
    negatives / reduced joint distribution, and saves the losses and its rows' gradients."""
    import torch
    from detectron2.utils import comm

    from ovss_d2.modeling.contrastive import cross_modal_info_nce
    from ovss_d2.modeling.clustering import iic_loss

    data = torch.load(in_file)
    rank, world = comm.get_rank(), comm.get_world_size()
    out = {}
    for key in ("img", "txt", "p", "q"):
        n = data[key].shape[0] // world
        out[key] = data[key][rank * n:(rank + 1) * n].clone().requires_grad_(True)
    scale = torch.tensor(data["scale"])
    res = {}
    for symmetric in (False, True):
        out["img"].grad = out["txt"].grad = None
        loss = cross_modal_info_nce(out["img"], out["txt"], scale, symmetric=symmetric)
        loss.backward()
        res[f"nce_{symmetric}"] = loss.detach()
        res[f"nce_{symmetric}_grad_img"] = out["img"].grad.clone()
        res[f"nce_{symmetric}_grad_txt"] = out["txt"].grad.clone()
    loss = iic_loss(out["p"], out["q"])
    loss.backward()
    res["iic"] = loss.detach()
    res["iic_grad_p"] = out["p"].grad.clone()
    torch.save(res, os.path.join(out_dir, f"rank{rank}.pt"))
