import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import evaluator_worker, many_class_names, register_label_folder
from ovss_d2.engine import launch
from ovss_d2.evaluation import OpenVocabSemSegEvaluator

NUM_CLASSES = 310  # > 255: 16-bit label files
IGNORE = 255 if NUM_CLASSES <= 255 else 65535
UNSEEN = [3, 17, 250, 300]


def reference_metrics(preds, gts, n, ignore, unseen):
    """Straightforward per-class counting, independent of the evaluator's confusion matrix."""
    tp, fp, fn = np.zeros(n), np.zeros(n), np.zeros(n)
    for p, g in zip(preds, gts):
        valid = g != ignore
        p, g = p[valid], g[valid]
        for c in range(n):
            tp[c] += np.sum((p == c) & (g == c))
            fp[c] += np.sum((p == c) & (g != c))
            fn[c] += np.sum((p != c) & (g == c))
    union = tp + fp + fn
    present = union > 0
    iou = np.where(present, tp / np.maximum(union, 1), np.nan)
    gt_count = tp + fn
    acc = np.where(gt_count > 0, tp / np.maximum(gt_count, 1), np.nan)
    freq = gt_count / gt_count.sum()
    seen_mask = np.ones(n, bool)
    seen_mask[unseen] = False
    res = {
        "mIoU": 100 * np.nanmean(iou), "mACC": 100 * np.nanmean(acc),
        "pACC": 100 * tp.sum() / gt_count.sum(), "fwIoU": 100 * np.nansum(iou * freq),
        "mIoU-seen": 100 * np.nanmean(iou[seen_mask]), "mIoU-unseen": 100 * np.nanmean(iou[~seen_mask]),
    }
    res["hIoU"] = 2 * res["mIoU-seen"] * res["mIoU-unseen"] / (res["mIoU-seen"] + res["mIoU-unseen"])
    for c in range(n):
        res[f"IoU-class {c}"] = 100 * iou[c]
    return res


@pytest.fixture(scope="module")
def labelled_set(tmp_path_factory):
    """6 images with 16-bit labels over 310 classes (ignore = 65535), and random score maps whose
    argmax is correct on ~half the pixels."""
    root = str(tmp_path_factory.mktemp("many_classes"))
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "labels"))
    rng = np.random.default_rng(0)
    preds, gts = [], []
    for i in range(6):
        h, w = 20 + i, 30
        gt = rng.integers(0, NUM_CLASSES, (h, w)).astype(np.uint16)
        gt[rng.random((h, w)) < 0.1] = IGNORE
        scores = torch.rand(NUM_CLASSES, h, w)
        keep = torch.from_numpy((rng.random((h, w)) < 0.5) & (gt != IGNORE))
        ys, xs = torch.nonzero(keep, as_tuple=True)
        scores[torch.from_numpy(gt.astype(np.int64))[ys, xs], ys, xs] = 2.0
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(os.path.join(root, "images", f"{i}.jpg"))
        Image.fromarray(gt).save(os.path.join(root, "labels", f"{i}.png"))
        preds.append(scores)
        gts.append(gt.astype(np.int64))
    torch.save(preds, os.path.join(root, "preds.pt"))
    return root, preds, gts


def _evaluate_single(root, preds):
    name = "eval_many_single"
    register_label_folder(name, root, NUM_CLASSES, [f"class {c}" for c in UNSEEN])
    from detectron2.data import DatasetCatalog

    ev = OpenVocabSemSegEvaluator(name, distributed=False, ignore_label=IGNORE)
    ev.reset()
    for d, p in zip(sorted(DatasetCatalog.get(name), key=lambda d: d["file_name"]), preds):
        ev.process([d], [{"sem_seg": p}])
    return ev.evaluate()["sem_seg"]


def test_labels_are_16_bit(labelled_set):
    root, _, gts = labelled_set
    assert Image.open(os.path.join(root, "labels", "0.png")).mode.startswith("I")


def test_metrics_match_independent_numpy(labelled_set):
    root, preds, gts = labelled_set
    res = _evaluate_single(root, preds)
    ref = reference_metrics([p.argmax(0).numpy() for p in preds], gts, NUM_CLASSES, IGNORE, UNSEEN)
    for k, v in ref.items():
        assert res[k] == pytest.approx(v, abs=1e-6, nan_ok=True), k
    assert len([k for k in res if k.startswith("IoU-")]) == NUM_CLASSES


def test_merged_over_two_processes_equals_single(labelled_set, tmp_path):
    root, preds, _ = labelled_set
    single = _evaluate_single(root, preds)
    out = str(tmp_path / "dist.json")
    launch(evaluator_worker, 2, dist_url="auto",
           args=(out, "eval_many_dist", root, NUM_CLASSES, [f"class {c}" for c in UNSEEN],
                 os.path.join(root, "preds.pt"), IGNORE))
    with open(out) as f:
        merged = json.load(f)
    for k, v in single.items():
        assert merged[k] == pytest.approx(v, abs=1e-9, nan_ok=True), k


def test_out_of_range_label_is_a_clear_error():
    from detectron2.data import MetadataCatalog

    MetadataCatalog.get("eval_range").set(stuff_classes=many_class_names(3), ignore_label=255)
    ev = OpenVocabSemSegEvaluator("eval_range", distributed=False)
    ev.reset()
    with pytest.raises(ValueError, match="label 7 outside 0..2"):
        ev.accumulate(np.zeros((2, 2), np.int64), np.array([[0, 1], [7, 255]]), "x.png")
