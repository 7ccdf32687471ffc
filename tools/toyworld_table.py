#!/usr/bin/env python
"""Train and evaluate every method's toy config on ToyWorld and write one table.

    python tools/toyworld_table.py [--methods clip_baseline,sed,err_seg,zeroseg,zeroseg_fine,vil_seg]
                                   [--output-dir output/toyworld_table] [--force]

1. ToyWorld and the tiny CLIP (both cached; ``make quickstart`` makes them too), and the tiny
   CLIP's zero-shot accuracies: crops and stride-32 cells of both evaluation sets;
2. for each method, ``train_net.py --config-file configs/toy/<method>_toy.yaml`` (``--eval-only``
   for the training-free baseline; ``zeroseg_fine`` first builds its teacher-feature cache with
   ``tools/cache_teacher_features.py``) into ``<output-dir>/<method>``; a method whose metrics are
   there already is not run again unless ``--force``;
3. one table (``table.md``, ``table.csv``, ``table.json`` in the output folder): mIoU, seen and
   unseen mIoU, their harmonic mean hIoU and pixel accuracy on ``toyworld_val`` (the training
   vocabulary + held-out pairs) and ``toyworld_wide_val`` (a larger vocabulary), with the
   training time of each method on this machine; for the ZeroSeg rows also ``toyworld_objects_val``
   evaluated on the whole image and with sliding windows (``SLIDE_WINDOWS``).
"""
import argparse
import csv
import json
import os
import re
import subprocess
import sys
import time
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import ovss_d2  # noqa: E402,F401
from tqdm import tqdm  # noqa: E402

# key -> (name in the table, config, trained by train_net.py)
METHODS: Dict[str, tuple] = {
    "clip_baseline": ("CLIP dense baseline (training-free)", "configs/toy/clip_baseline_toy.yaml", False),
    "sed": ("SED", "configs/toy/sed_toy.yaml", True),
    "err_seg": ("ERR-Seg", "configs/toy/err_seg_toy.yaml", True),
    "zeroseg": ("ZeroSeg (no labels)", "configs/toy/zeroseg_toy.yaml", True),
    "zeroseg_fine": ("ZeroSeg, finer grids, 1500 it (no labels)", "configs/toy/zeroseg_toy_fine.yaml", True),
    "vil_seg": ("ViL-Seg (captions only)", "configs/toy/vil_seg_toy.yaml", True),
}
# Methods trained from a teacher-feature cache: built first (tools/cache_teacher_features.py) into
# <output-dir>/<method>/teacher.
CACHED_TEACHER = ("zeroseg_fine",)
EVAL_SETS = ("toyworld_val", "toyworld_wide_val")
# ZeroSeg on toyworld_objects_val with sliding windows (MODEL.ZEROSEG.TEST_MODE slide), besides the
# whole image: name -> (window, stride, what it is). GroupViT's protocol (448 windows at stride 224 for a
# model trained on 224 crops, images at 448 on the short side) scaled to the toy's 64 px crops is 128 /
# 64 on scenes tested at 128: one window per square scene. The training crop's own size is the second.
SLIDE_WINDOWS = {"slide_128": (128, 64, "GroupViT's protocol scaled: windows of 2x the 64 px crop, stride 64"),
                 "slide_64": (64, 32, "windows of the 64 px training crop, stride 32")}
SLIDE_METHODS = ("zeroseg", "zeroseg_fine")
OBJECTS_SET = "toyworld_objects_val"
METRICS = ("mIoU", "mIoU-seen", "mIoU-unseen", "hIoU", "pACC")


def print_command(cmd: List[str]) -> None:
    """Echo a subprocess command line (after the interpreter), repository paths made relative."""
    print("  $ " + " ".join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd[1:]), flush=True)


def run_train_net(config: str, output_dir: str, train: bool, log_path: str, desc: str = "  train_net",
                  opts: Optional[List[str]] = None) -> float:
    """Run train_net.py on a config (training with a progress bar, or --eval-only); returns the
    seconds it took. Its whole output goes to ``log_path``."""
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", os.path.join(REPO, config)]
    if not train:
        cmd.append("--eval-only")
    cmd += ["OUTPUT_DIR", output_dir] + list(opts or [])
    print_command(cmd)
    from ovss_d2.engine import load_config

    max_iter = load_config(os.path.join(REPO, config)).SOLVER.MAX_ITER if train else 0
    os.makedirs(output_dir, exist_ok=True)
    start = time.time()
    with open(log_path, "w") as log, tqdm(total=max_iter or None, desc=desc, unit="it", disable=not train) as bar:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            m = re.search(r"iter: (\d+)", line)
            if m and train:
                bar.n = int(m.group(1)) + 1
                bar.refresh()
        if proc.wait() != 0:
            sys.exit(f"train_net.py failed (exit {proc.returncode}); see {log_path}")
    return time.time() - start


def build_teacher_cache(config: str, opts: List[str], log_path: str) -> float:
    """tools/cache_teacher_features.py for a config (resumes a partial cache); returns the seconds."""
    cmd = [sys.executable, os.path.join(REPO, "tools", "cache_teacher_features.py"), "--config-file",
           os.path.join(REPO, config)] + list(opts)
    print_command(cmd)
    os.makedirs(os.path.dirname(log_path), exist_ok=True)
    start = time.time()
    with open(log_path, "w") as log:
        if subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode != 0:
            sys.exit(f"cache_teacher_features.py failed; see {log_path}")
    return time.time() - start


def objects_val_windows(config: str, out: str, force: bool) -> Dict[str, Dict]:
    """A trained ZeroSeg run (``out``) on toyworld_objects_val: the whole image (its training run's own
    evaluation) and each of ``SLIDE_WINDOWS`` (``--eval-only`` into ``out/<name>``)."""
    found = {"whole": {"what": "whole image", **read_metrics(out, OBJECTS_SET)}}
    for name, (window, stride, what) in SLIDE_WINDOWS.items():
        sub = os.path.join(out, name)
        if force or not os.path.isfile(os.path.join(sub, "inference", OBJECTS_SET, "sem_seg_evaluation.json")):
            run_train_net(config, sub, False, os.path.join(sub, "eval.log"), opts=[
                "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"), "DATASETS.TEST", f"('{OBJECTS_SET}',)",
                "MODEL.ZEROSEG.TEST_MODE", "slide", "MODEL.ZEROSEG.TEST_CROP_SIZE", str(window),
                "MODEL.ZEROSEG.TEST_STRIDE", str(stride)])
        found[name] = {"what": what, "window": window, "stride": stride, **read_metrics(sub, OBJECTS_SET)}
    return found


def read_metrics(output_dir: str, dataset: str) -> Dict[str, float]:
    with open(os.path.join(output_dir, "inference", dataset, "sem_seg_evaluation.json")) as f:
        return json.load(f)


def format_row(name: str, metrics: Dict[str, Dict[str, float]], datasets=EVAL_SETS) -> str:
    """One Markdown table row: the method, then METRICS for each dataset."""
    cells = [name]
    for d in datasets:
        cells += [f"{metrics[d].get(k, float('nan')):.1f}" for k in METRICS]
    return "| " + " | ".join(cells) + " |"


def table_header(datasets=EVAL_SETS) -> List[str]:
    short = {"toyworld_val": "val", "toyworld_wide_val": "wide"}
    heads = ["method"] + [f"{short.get(d, d)} {k}" for d in datasets for k in METRICS]
    return ["| " + " | ".join(heads) + " |", "|" + "|".join([" --- "] + [" ---: "] * (len(heads) - 1)) + "|"]


def clip_report(path: str) -> Dict[str, Dict[str, float]]:
    """The tiny CLIP's zero-shot accuracies (cached next to the checkpoint)."""
    from ovss_d2.toyworld import tiny_clip

    report_path = os.path.splitext(path)[0] + ".zero_shot.json"
    if os.path.isfile(report_path):
        with open(report_path) as f:
            return json.load(f)
    report = tiny_clip.selection_report(path)
    with open(report_path, "w") as f:
        json.dump(report, f, indent=1)
    return report


def clip_lines(report: Dict[str, Dict[str, float]]) -> List[str]:
    lines = []
    for key, title in (("crops_val", "crops, toyworld_val"),
                       ("cells_val", "stride-32 cells of 256 px scenes, toyworld_val"),
                       ("crops_wide_val", "crops, toyworld_wide_val"),
                       ("cells_wide_val", "stride-32 cells of 256 px scenes, toyworld_wide_val")):
        r = report[key]
        lines.append(f"- {title}: seen objects {r['seen_objects']:.1f} %, unseen objects {r['unseen_objects']:.1f} %, "
                     f"seen stuff {r['seen_stuff']:.1f} %, unseen stuff {r['unseen_stuff']:.1f} % "
                     f"(chance {r['chance']:.1f} %)")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {list(METHODS)}")
    parser.add_argument("--output-dir", default=os.path.join(REPO, "output", "toyworld_table"))
    parser.add_argument("--force", action="store_true", help="train again methods that have results")
    args = parser.parse_args(argv)
    keys = [k.strip() for k in args.methods.split(",") if k.strip()]
    unknown = [k for k in keys if k not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    from ovss_d2.toyworld import generate, tiny_clip

    print("[ToyWorld]", generate(), flush=True)
    start = time.time()
    clip_path = tiny_clip.train_tiny_clip()
    clip_seconds = time.time() - start
    report = clip_report(clip_path)
    print("[tiny CLIP]", clip_path)
    print("\n".join(clip_lines(report)), flush=True)
    rows, results = [], {}
    for key in keys:
        name, config, train = METHODS[key]
        out = os.path.join(args.output_dir, key)
        done = all(os.path.isfile(os.path.join(out, "inference", d, "sem_seg_evaluation.json")) for d in EVAL_SETS)
        timing_path = os.path.join(out, "toyworld_table_time.json")
        if args.force or not done:
            print(f"[{name}]", flush=True)
            opts, seconds = [], 0.0
            if key in CACHED_TEACHER:
                opts = ["MODEL.ZEROSEG.TEACHER_CACHE", os.path.join(out, "teacher")]
                seconds = build_teacher_cache(config, opts, os.path.join(out, "teacher.log"))
            seconds += run_train_net(config, out, train, os.path.join(out, "train_net.log"), desc=f"  {key}",
                                     opts=opts)
            with open(timing_path, "w") as f:
                json.dump({"seconds": seconds}, f)
        seconds = json.load(open(timing_path))["seconds"] if os.path.isfile(timing_path) else float("nan")
        metrics = {d: read_metrics(out, d) for d in EVAL_SETS}
        results[key] = {"name": name, "config": config, "trained": train, "seconds": seconds,
                        **{d: {k: metrics[d].get(k) for k in METRICS} for d in EVAL_SETS}}
        rows.append(format_row(f"{name}", metrics))
        if key in SLIDE_METHODS:
            results[key]["objects_val"] = objects_val_windows(config, out, args.force)
    slide_lines = [f"{results[k]['name']} on {OBJECTS_SET} (mIoU / pACC): " + "; ".join(
        f"{v['what']} {v['mIoU']:.1f} / {v['pACC']:.1f}" for v in results[k]["objects_val"].values())
        for k in keys if "objects_val" in results[k]]
    lines = ["Tiny CLIP zero-shot accuracy (prompt \"a photo of a {}.\", all classes of the set):"]
    lines += clip_lines(report) + [""] + table_header() + rows + [""]
    lines.append("Training time on this machine: " + ", ".join(
        f"{results[k]['name']} {results[k]['seconds'] / 60:.1f} min" for k in keys if results[k]["trained"])
        + f"; tiny CLIP {clip_seconds / 60:.1f} min (0 when cached).")
    lines += ([""] + slide_lines) if slide_lines else []
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "table.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.output_dir, "table.json"), "w") as f:
        json.dump({"tiny_clip": {"checkpoint": clip_path, **report}, "methods": results}, f, indent=1)
    with open(os.path.join(args.output_dir, "table.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["method", "config", "seconds"] + [f"{d}/{k}" for d in EVAL_SETS for k in METRICS])
        for k in keys:
            r = results[k]
            w.writerow([r["name"], r["config"], f"{r['seconds']:.0f}"]
                       + [f"{r[d][k2]:.2f}" if r[d][k2] is not None else "" for d in EVAL_SETS for k2 in METRICS])
    print("\n" + "\n".join(lines))
    print(f"written: {os.path.relpath(os.path.join(args.output_dir, 'table.md'), os.getcwd())} (+ .csv, .json)")
    return results


if __name__ == "__main__":
    main()
