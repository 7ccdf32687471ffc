#!/usr/bin/env python
"""Whether a ZeroSeg model's segments collapsed, and what it segments: one row of docs/methods/zeroseg.md's
ablation table.

    python tools/zeroseg_diagnostics.py --config-file configs/toy/zeroseg_toy.yaml \\
        [--weights output/toy/zeroseg/model_final.pth | none] [--stats-dataset toyworld_val] \\
        [--datasets toyworld_val,toyworld_objects_val] [--rules paper|all] [--limit N] [--json out.json] \\
        [KEY VALUE ...]

1. Collapse statistics over the images of ``--stats-dataset`` (at the test size): final groups
   used per image, the largest group's share of the pixels, mean pairwise cosine of the G segment
   embeddings (all of them, and the used ones only), the used groups that can be told apart (their
   segments merged where the cosine is 0.9 or more; 1 = one label per image); and the objects-mIoU (below) of the groups
   named by an oracle, each by the ground-truth class covering most of it: what the grouping
   allows, whatever the segment embeddings say.
2. mIoU (all / seen / unseen) and pixel accuracy on each of ``--datasets``, with each dataset's
   background threshold, for GroupViT's two inference rules as configured (``--rules paper``) or for
   all four on/off combinations (``--rules all``): the top-k class restriction
   (``MODEL.ZEROSEG.TEST_TOPK_CLASSES``) and the threshold capped by the best group probability
   (``MODEL.ZEROSEG.BACKGROUND_CAP``). On a dataset that also names stuff, ``objects-mIoU`` (-seen,
   -unseen) is the mean IoU of the classes of ``--objects-dataset`` but background: how well the
   objects are found when no background rule is involved (any model can be compared on it, e.g.
   the CLIP dense baseline's ``sem_seg_evaluation.json``, see :func:`object_miou`).

``--weights none`` measures the model with its initial weights.
"""
import argparse
import json
import os
import sys
from typing import Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovss_d2  # noqa: E402,F401
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from detectron2.evaluation import inference_on_dataset  # noqa: E402

from ovss_d2.checkpoint import OVSSCheckpointer  # noqa: E402
from ovss_d2.engine import OVSSTrainer, load_config  # noqa: E402
from ovss_d2.evaluation import OpenVocabSemSegEvaluator  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402

from ovss_d2.data.io import read_label  # noqa: E402
from ovss_d2.modeling.grouping import average_statistics, group_oracle_labels, segment_statistics  # noqa: E402
from ovss_d2.modeling.grouping.collapse_diagnostics import DUPLICATE_COSINE  # noqa: E402
from ovss_d2.modeling.meta_arch.zeroseg import is_background  # noqa: E402

METRICS = ("mIoU", "mIoU-seen", "mIoU-unseen", "pACC")


@torch.no_grad()
def collapse_statistics(cfg, model, dataset: str, limit: int = 0, objects_dataset: str = "") -> Dict[str, float]:
    """Mean :func:`segment_statistics` over the first ``limit`` (0: all) test images of ``dataset``,
    and (with ``objects_dataset``) ``oracle-objects-mIoU``: :func:`object_miou` of the groups named
    by their majority ground-truth class (:func:`group_oracle_labels`), what the grouping allows
    whatever the naming."""
    model.eval()
    rows = []
    oracle = OpenVocabSemSegEvaluator(dataset, distributed=False)
    oracle.reset()
    for batch in OVSSTrainer.build_test_loader(cfg, dataset):
        for x in batch:
            seg = model.segment_input(x)
            rows.append(segment_statistics(seg["segments"], seg["groups"]))
            gt_file = oracle.gt_file(x)
            gt = torch.from_numpy(read_label(gt_file).astype(np.int64))
            groups = F.interpolate(seg["groups"][None, None].float(), size=gt.shape, mode="nearest")[0, 0].long()
            oracle.accumulate(group_oracle_labels(groups, gt, oracle.ignore_label).numpy(), gt.numpy(), gt_file)
        if limit and len(rows) >= limit:
            break
    out = average_statistics(rows[:limit] if limit else rows)
    if objects_dataset:
        res = oracle.evaluate()["sem_seg"]
        out.update({f"oracle-{k}": v for k, v in object_miou(res, dataset, objects_dataset).items()},
                   **{"oracle-pACC": res["pACC"]})
    return out


def object_miou(results: Dict[str, float], dataset: str, objects_dataset: str) -> Dict[str, float]:
    """``objects-mIoU`` / ``-seen`` / ``-unseen``: mean of the ``IoU-<class>`` entries of an
    evaluation of ``dataset`` over the classes of ``objects_dataset`` but background (seen / unseen
    as ``dataset``'s metadata marks them); NaN where none was evaluated."""
    objects = [c for c in MetadataCatalog.get(objects_dataset).stuff_classes if not is_background(c)]
    unseen = set(getattr(MetadataCatalog.get(dataset), "unseen_classes", []))
    out = {}
    groups = (("", lambda c: True), ("-seen", lambda c: c not in unseen), ("-unseen", lambda c: c in unseen))
    for suffix, keep in groups:
        values = [results[f"IoU-{c}"] for c in objects if keep(c) and f"IoU-{c}" in results]
        values = [v for v in values if v == v]
        out[f"objects-mIoU{suffix}"] = sum(values) / len(values) if values else float("nan")
    return out


@torch.no_grad()
def evaluate(cfg, model, datasets: Sequence[str], topk: int, cap: bool,
             objects_dataset: str = "") -> Dict[str, Dict[str, float]]:
    """METRICS of each dataset (its own vocabulary and background threshold) with the two rules set,
    plus :func:`object_miou` on the datasets other than ``objects_dataset``."""
    model.eval()
    model.test_topk_classes, model.background_cap = topk, cap
    out = {}
    for name in datasets:
        model.use_dataset(name, cfg.TEST.DATASET_SETTINGS)
        res = inference_on_dataset(model, OVSSTrainer.build_test_loader(cfg, name),
                                   OpenVocabSemSegEvaluator(name, distributed=False))["sem_seg"]
        out[name] = {k: res.get(k, float("nan")) for k in METRICS}
        if objects_dataset and name != objects_dataset:
            out[name].update(object_miou(res, name, objects_dataset))
    return out


def rule_settings(cfg, which: str) -> List[Dict]:
    k = cfg.MODEL.ZEROSEG.TEST_TOPK_CLASSES or 5
    configured = {"topk": cfg.MODEL.ZEROSEG.TEST_TOPK_CLASSES, "cap": cfg.MODEL.ZEROSEG.BACKGROUND_CAP}
    if which == "paper":
        return [configured]
    return [{"topk": t, "cap": c} for t in (k, 0) for c in (True, False)]


def build(cfg, weights: str):
    model = OVSSTrainer.build_model(cfg)
    if weights and weights != "none":
        OVSSCheckpointer(model, strict=cfg.MODEL.WEIGHTS_STRICT).load(weights)
    return model.eval()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--weights", default="", help="checkpoint (default: MODEL.WEIGHTS; 'none': initial weights)")
    parser.add_argument("--stats-dataset", default="toyworld_val")
    parser.add_argument("--datasets", default="toyworld_val,toyworld_objects_val", help="comma-separated")
    parser.add_argument("--objects-dataset", default="toyworld_objects_val",
                        help="whose classes but background count as objects ('': no objects-mIoU)")
    parser.add_argument("--rules", choices=["paper", "all"], default="paper",
                        help="GroupViT's inference rules as configured, or all four on/off combinations")
    parser.add_argument("--limit", type=int, default=0, help="images for the collapse statistics (0: all)")
    parser.add_argument("--json", default="", help="also write the results here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)

    cfg = load_config(args.config_file, args.opts)
    model = build(cfg, args.weights or cfg.MODEL.WEIGHTS or "none")
    datasets = [d for d in args.datasets.split(",") if d]
    result = {"config": args.config_file, "weights": args.weights or cfg.MODEL.WEIGHTS or "none",
              "collapse": collapse_statistics(cfg, model, args.stats_dataset, args.limit, args.objects_dataset),
              "evaluation": []}
    c = result["collapse"]
    print(f"{args.stats_dataset} ({int(c['images'])} images): groups used {c['groups_used']:.2f} of "
          f"{model.head.num_group_tokens[-1]}, largest group {100 * c['largest_group']:.1f} % of the pixels, "
          f"segment cosine {c['segment_cosine']:.3f} (used groups: {c['used_segment_cosine']:.3f}), "
          f"groups told apart (segment cosine < {DUPLICATE_COSINE}) {c['distinct_groups']:.2f}")
    if "oracle-objects-mIoU" in c:
        print(f"  groups named by their majority ground-truth class: objects-mIoU {c['oracle-objects-mIoU']:.1f} "
              f"(seen {c['oracle-objects-mIoU-seen']:.1f} / unseen {c['oracle-objects-mIoU-unseen']:.1f}), "
              f"pixel accuracy {c['oracle-pACC']:.1f}")
    for rules in rule_settings(cfg, args.rules):
        metrics = evaluate(cfg, model, datasets, rules["topk"], rules["cap"], args.objects_dataset)
        result["evaluation"].append({**rules, "metrics": metrics})
        print(f"top-k classes {rules['topk'] or 'off'}, background cap {'on' if rules['cap'] else 'off'}:")
        for name, m in metrics.items():
            print(f"  {name:24s} " + "  ".join(f"{k} {v:5.1f}" for k, v in m.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
