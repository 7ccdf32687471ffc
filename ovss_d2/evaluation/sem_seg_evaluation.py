"""Semantic-segmentation evaluation for any vocabulary size (16-bit labels), with an optional
seen / unseen split; merged across ranks."""
import itertools
import json
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..data.io import read_label

logger = logging.getLogger(__name__)


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if x.size else float("nan")


def metrics_from_confusion(conf: np.ndarray, class_names: Sequence[str],
                           unseen: Optional[Sequence[int]] = None) -> Dict[str, float]:
    """Metrics (in percent) from a (N+1, N+1) confusion matrix, rows = prediction, columns = ground
    truth, last column = ignored pixels (excluded), last row unused.

    mIoU / mACC average the classes present in prediction or ground truth (IoU) / in the ground
    truth (accuracy); fwIoU weights IoU by ground-truth frequency; pACC is pixel accuracy.
    """
    n = len(class_names)
    c = conf[:n, :n].astype(np.float64)
    tp = np.diag(c)
    pos_gt = c.sum(axis=0)
    pos_pred = c.sum(axis=1)
    union = pos_gt + pos_pred - tp
    acc_valid = pos_gt > 0
    iou_valid = union > 0
    acc = np.full(n, np.nan)
    iou = np.full(n, np.nan)
    acc[acc_valid] = tp[acc_valid] / pos_gt[acc_valid]
    iou[iou_valid] = tp[iou_valid] / union[iou_valid]
    total = pos_gt.sum()
    freq = pos_gt / total if total > 0 else np.zeros(n)
    res = OrderedDict()
    res["mIoU"] = 100 * _mean(iou[iou_valid])
    res["fwIoU"] = 100 * float(np.sum(iou[iou_valid] * freq[iou_valid]))
    res["mACC"] = 100 * _mean(acc[acc_valid])
    res["pACC"] = 100 * float(tp.sum() / total) if total > 0 else float("nan")
    if unseen is not None and len(unseen):
        is_unseen = np.zeros(n, dtype=bool)
        is_unseen[list(unseen)] = True
        seen_miou = 100 * _mean(iou[iou_valid & ~is_unseen])
        unseen_miou = 100 * _mean(iou[iou_valid & is_unseen])
        res["mIoU-seen"] = seen_miou
        res["mIoU-unseen"] = unseen_miou
        res["hIoU"] = (2 * seen_miou * unseen_miou / (seen_miou + unseen_miou)
                       if seen_miou + unseen_miou > 0 else 0.0)
        res["pACC-unseen"] = 100 * float(tp[is_unseen].sum() / pos_gt[is_unseen].sum()) \
            if pos_gt[is_unseen].sum() > 0 else float("nan")
    for i, name in enumerate(class_names):
        res[f"IoU-{name}"] = 100 * iou[i]
    for i, name in enumerate(class_names):
        res[f"ACC-{name}"] = 100 * acc[i]
    return res


class OpenVocabSemSegEvaluator(DatasetEvaluator):
    """mIoU, fwIoU, mACC, pACC and per-class IoU / accuracy of ``outputs[i]["sem_seg"]`` (N, H, W)
    scores against the dataset's label files, for any number of classes.

    The class names, ignore label and unseen classes come from the dataset's metadata
    (``stuff_classes``, ``ignore_label``, ``unseen_classes``); arguments override them.
    """

    def __init__(self, dataset_name: str, distributed: bool = True, output_dir: Optional[str] = None, *,
                 class_names: Optional[Sequence[str]] = None, ignore_label: Optional[int] = None,
                 unseen_classes: Optional[Sequence[str]] = None):
        meta = MetadataCatalog.get(dataset_name)
        self.dataset_name = dataset_name
        self.class_names = list(class_names or meta.stuff_classes)
        self.num_classes = len(self.class_names)
        self.ignore_label = ignore_label if ignore_label is not None else getattr(meta, "ignore_label", 255)
        unseen = unseen_classes if unseen_classes is not None else getattr(meta, "unseen_classes", [])
        self.unseen_ids = [self.class_names.index(c) for c in unseen] if unseen else None
        self._distributed = distributed
        self._output_dir = output_dir
        self._gt_files = None

    def reset(self) -> None:
        self._conf = np.zeros((self.num_classes + 1, self.num_classes + 1), dtype=np.int64)

    def gt_file(self, inp: Dict) -> str:
        """The ground-truth label map of an input dict (its own entry, or the dataset's)."""
        if "sem_seg_file_name" in inp:
            return inp["sem_seg_file_name"]
        if self._gt_files is None:
            self._gt_files = {d["file_name"]: d["sem_seg_file_name"] for d in DatasetCatalog.get(self.dataset_name)}
        return self._gt_files[inp["file_name"]]

    def accumulate(self, pred: np.ndarray, gt: np.ndarray, source: str = "") -> None:
        """Add one (H, W) prediction of class ids and its (H, W) ground truth to the counts."""
        if pred.shape != gt.shape:
            raise ValueError(f"Prediction {pred.shape} and ground truth {gt.shape} differ in size ({source}).")
        n = self.num_classes
        gt = gt.astype(np.int64)
        ignore = gt == self.ignore_label
        bad = ~ignore & ((gt < 0) | (gt >= n))
        if bad.any():
            raise ValueError(
                f"Ground truth {source} holds label {int(gt[bad][0])} outside 0..{n - 1} and not the "
                f"ignore label {self.ignore_label}: does the dataset's class list match its labels?"
            )
        gt = np.where(ignore, n, gt)
        pred = pred.astype(np.int64)
        self._conf += np.bincount((n + 1) * pred.reshape(-1) + gt.reshape(-1),
                                  minlength=(n + 1) ** 2).reshape(n + 1, n + 1)

    def process(self, inputs: List[Dict], outputs: List[Dict]) -> None:
        for inp, out in zip(inputs, outputs):
            pred = out["sem_seg"].argmax(dim=0).cpu().numpy()
            gt_file = self.gt_file(inp)
            self.accumulate(pred, read_label(gt_file), gt_file)

    def evaluate(self):
        conf = self._conf
        if self._distributed:
            comm.synchronize()
            conf = sum(comm.all_gather(self._conf))
            if not comm.is_main_process():
                return None
        res = metrics_from_confusion(conf, self.class_names, self.unseen_ids)
        if self._output_dir:
            PathManager.mkdirs(self._output_dir)
            with PathManager.open(os.path.join(self._output_dir, "sem_seg_evaluation.json"), "w") as f:
                json.dump(res, f, indent=1)
        summary = {k: v for k, v in itertools.islice(res.items(), 0, 8) if not k.startswith(("IoU-", "ACC-"))}
        logger.info(f"{self.dataset_name}: {summary}")
        return OrderedDict({"sem_seg": res})
