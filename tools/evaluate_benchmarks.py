#!/usr/bin/env python
"""Evaluate one model on any set of the built-in benchmarks and write one table of the results.

    python tools/evaluate_benchmarks.py --config-file configs/sed/eval_sed_convnext_b_768.yaml \\
        --weights /path/to/model.pth --benchmarks openvocab --num-gpus 4 --output-dir output/bench/sed_b
    python tools/evaluate_benchmarks.py --config-file configs/zeroseg/... --benchmarks zeroseg
    python tools/evaluate_benchmarks.py --config-file ... --benchmarks a150 pc59 MODEL.DEVICE cpu

``--benchmarks`` takes keys (a847 pc459 a150 pc59 pas20 coco171 | voc21 pc60 coco81 | vilseg-voc
vilseg-pc vilseg-coco), groups (openvocab, zeroseg, vilseg, all) or dataset names. Each benchmark
is evaluated by ``train_net.py``'s evaluation path (OVSSTrainer.test) with its own vocabulary and
its per-benchmark settings (TEST.DATASET_SETTINGS: ERR-Seg's CRM N, ZeroSeg's background
threshold), one benchmark after another; ``--num-gpus N`` splits every benchmark over N processes
(GPUs, or CPU processes without CUDA). Missing or half-prepared benchmarks stop the run before the
model is built, naming the prepare command.

Writes ``<output-dir>/benchmarks.md``, ``.csv`` and ``.json`` (mIoU, fwIoU, mACC, pACC and, for
splits with unseen classes, seen / unseen mIoU, hIoU and unseen pixel accuracy, in percent) and
keeps each benchmark's full results (per-class IoU) in ``<output-dir>/inference/<dataset>/``.
Trailing ``KEY VALUE`` pairs override the config.
"""
import argparse
import csv
import json
import math
import os
import sys
from typing import Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import ovss_d2  # noqa: E402,F401  (compat shims before detectron2)
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.engine import default_argument_parser  # noqa: E402

from ovss_d2.data.datasets import BenchmarkSpec, register_all_benchmarks, resolve_benchmarks  # noqa: E402
from ovss_d2.engine import launch  # noqa: E402

METRICS = ("mIoU", "fwIoU", "mACC", "pACC", "mIoU-seen", "mIoU-unseen", "hIoU", "pACC-unseen")
TABLE_NAME = "benchmarks"


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", default="", help="checkpoint (default: the config's MODEL.WEIGHTS)")
    p.add_argument("--benchmarks", nargs="+", required=True, help="keys, groups or dataset names")
    p.add_argument("--output-dir", default="", help="default: <config OUTPUT_DIR>/benchmarks")
    p.add_argument("--datasets-root", default="",
                   help="dataset root (default: $DETECTRON2_DATASETS, else ./datasets)")
    p.add_argument("--num-gpus", type=int, default=1, help="processes per machine (GPUs, or CPU processes)")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0)
    p.add_argument("--dist-url", default="auto")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p.parse_args(argv)


def evaluate(net_args) -> None:
    """Runs in every process: ``train_net.py --eval-only`` (set-up with the start-up dataset checks,
    model, checkpoint, the same weights in every process, OVSSTrainer.test)."""
    from ovss_d2.engine import OVSSTrainer, setup

    OVSSTrainer.evaluate(setup(net_args))


def _fmt(v) -> str:
    return "" if v is None else f"{v:.2f}"


def _number(v) -> Optional[float]:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def table_rows(specs: Sequence[BenchmarkSpec], output_dir: str) -> List[Dict]:
    """One row per benchmark from the evaluator's ``inference/<dataset>/sem_seg_evaluation.json``."""
    rows = []
    for spec in specs:
        path = os.path.join(output_dir, "inference", spec.name, "sem_seg_evaluation.json")
        if not os.path.isfile(path):
            raise RuntimeError(f"The evaluation of {spec.name} wrote no {path}: see the log in {output_dir}.")
        with open(path) as f:
            res = json.load(f)
        meta = MetadataCatalog.get(spec.name)
        settings = {k: getattr(meta, k) for k in spec.settings}
        row = {"benchmark": spec.key, "dataset": spec.name, "protocol": spec.protocol,
               "classes": len(meta.stuff_classes), "unseen": len(meta.unseen_classes),
               "images": len(DatasetCatalog.get(spec.name))}
        row.update({m: _number(res.get(m)) for m in METRICS})
        row.update({"settings": settings, "results_file": path})
        rows.append(row)
    return rows


def write_table(rows: List[Dict], output_dir: str, header: Dict) -> Dict[str, str]:
    """``benchmarks.md`` / ``.csv`` / ``.json`` in ``output_dir``; returns their paths. Metric
    columns no benchmark has (e.g. unseen mIoU without unseen splits) are left out of the Markdown."""
    metrics = [m for m in METRICS if any(r[m] is not None for r in rows)]
    cols = ["benchmark", "dataset", "classes", "images"] + metrics
    paths = {ext: os.path.join(output_dir, f"{TABLE_NAME}.{ext}") for ext in ("md", "csv", "json")}
    lines = [f"{header['config']}" + (f" ({header['weights']})" if header["weights"] else ""), "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r[c]) if c in METRICS else str(r[c]) for c in cols) + " |")
    with open(paths["md"], "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(paths["csv"], "w", newline="") as f:
        w = csv.writer(f)
        csv_cols = ["benchmark", "dataset", "protocol", "classes", "unseen", "images"] + list(METRICS)
        w.writerow(csv_cols)
        for r in rows:
            w.writerow(["" if r[c] is None else (f"{r[c]:.4f}" if c in METRICS else r[c]) for c in csv_cols])
    with open(paths["json"], "w") as f:
        json.dump({**header, "metrics_in_percent": True, "benchmarks": rows}, f, indent=1)
    return paths


def main(argv: Optional[Sequence[str]] = None) -> List[Dict]:
    args = parse_args(argv)
    specs = resolve_benchmarks(args.benchmarks)
    if args.datasets_root:  # the launched processes register under the same root
        os.environ["DETECTRON2_DATASETS"] = args.datasets_root
        register_all_benchmarks(args.datasets_root)
    from ovss_d2.engine import load_config

    cfg = load_config(args.config_file, args.opts)
    output_dir = args.output_dir or os.path.join(cfg.OUTPUT_DIR, "benchmarks")
    weights = args.weights or cfg.MODEL.WEIGHTS
    opts = list(args.opts) + ["DATASETS.TEST", repr(tuple(s.name for s in specs)), "OUTPUT_DIR", output_dir]
    if args.weights:
        opts += ["MODEL.WEIGHTS", args.weights]
    net_args = default_argument_parser().parse_args(
        ["--config-file", args.config_file, "--eval-only", "--num-gpus", str(args.num_gpus),
         "--num-machines", str(args.num_machines), "--machine-rank", str(args.machine_rank),
         "--dist-url", args.dist_url] + opts)
    for spec in specs:  # never report a previous run's numbers
        stale = os.path.join(output_dir, "inference", spec.name, "sem_seg_evaluation.json")
        if os.path.isfile(stale):
            os.remove(stale)

    launch(evaluate, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(net_args,))
    if args.machine_rank != 0:
        return []
    rows = table_rows(specs, output_dir)
    header = {"config": args.config_file, "weights": weights, "opts": list(args.opts)}
    paths = write_table(rows, output_dir, header)
    with open(paths["md"]) as f:
        print(f.read())
    print("written: " + ", ".join(paths.values()))
    return rows


if __name__ == "__main__":
    main()
