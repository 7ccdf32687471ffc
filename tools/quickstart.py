#!/usr/bin/env python
"""`make quickstart`: the whole pipeline on the built-in ToyWorld, on a CPU, in minutes.

1. generate ToyWorld (cached), 2. train the tiny CLIP on its captions (cached),
3. run train_net.py with the project's best method on ToyWorld and evaluate it (seen / unseen mIoU),
4. write demo overlays of a few validation images.
"""
import argparse
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tools"))

import ovss_d2  # noqa: E402,F401
from toyworld_table import EVAL_SETS, METHODS, format_row, read_metrics, run_train_net, table_header  # noqa: E402

# The best trained method the project has (a key of tools/toyworld_table.py's METHODS).
METHOD = "sed"


def write_overlays(config: str, weights: str, out_dir: str, n: int = 4) -> list:
    """Overlays of the first ``n`` ToyWorld val scenes with the val vocabulary (upscaled 3x)."""
    import numpy as np
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from PIL import Image

    from ovss_d2.predictor import Predictor
    from ovss_d2.utils import draw_overlay

    predictor = Predictor(os.path.join(REPO, config), weights)
    names = list(MetadataCatalog.get("toyworld_val").stuff_classes)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for d in DatasetCatalog.get("toyworld_val")[:n]:
        image = np.asarray(Image.open(d["file_name"]).convert("RGB"))
        label = predictor.predict(image, names).label
        big = lambda a: np.kron(a, np.ones((3, 3, 1) if a.ndim == 3 else (3, 3), a.dtype))  # noqa: E731
        path = os.path.join(out_dir, os.path.basename(d["file_name"]))
        Image.fromarray(draw_overlay(big(image), big(label), names)).save(path)
        paths.append(path)
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(REPO, "output", "quickstart"))
    args = parser.parse_args()
    name, config, train = METHODS[METHOD]
    t0 = time.time()
    from ovss_d2 import toyworld

    print("[1/4] ToyWorld")
    root = toyworld.generate()
    print(f"  {root}")
    t1 = time.time()
    print("[2/4] tiny CLIP trained on ToyWorld's caption corpus (cached after the first run)")
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_tiny_clip.py"), "--no-eval"], check=True,
                   cwd=REPO)
    print("  its zero-shot accuracies: python tools/train_tiny_clip.py (reuses the checkpoint, ~20 s)")
    t2 = time.time()
    print(f"[3/4] {name}: {'train and evaluate' if train else 'evaluate'} on ToyWorld")
    method_dir = os.path.join(args.output, "method")
    log_path = os.path.join(args.output, "train_net.log")
    run_train_net(config, method_dir, train, log_path)
    metrics = {d: read_metrics(method_dir, d) for d in EVAL_SETS}
    t3 = time.time()
    print("[4/4] demo overlays")
    weights = os.path.join(method_dir, "model_final.pth") if train else ""
    overlays = write_overlays(config, weights, os.path.join(args.output, "demo"))
    t4 = time.time()
    rel = lambda p: os.path.relpath(p, os.getcwd())  # noqa: E731
    print("\n==== quickstart summary ====")
    print(f"method            {name} ({config})")
    val = metrics["toyworld_val"]
    print(f"ToyWorld val      mIoU {val['mIoU']:.1f}  |  seen mIoU {val['mIoU-seen']:.1f}  |  "
          f"unseen mIoU {val['mIoU-unseen']:.1f}  |  pixel acc {val['pACC']:.1f}")
    print("its row of the ToyWorld table (tools/toyworld_table.py):")
    print("\n".join(table_header() + [format_row(name, metrics)]))
    print(f"time              data {t1 - t0:.0f}s, tiny CLIP {t2 - t1:.0f}s, method {t3 - t2:.0f}s, "
          f"demo {t4 - t3:.0f}s, total {t4 - t0:.0f}s")
    print(f"outputs           {rel(args.output)}/")
    print(f"  metrics         {rel(os.path.join(method_dir, 'inference'))}/<dataset>/sem_seg_evaluation.json")
    print(f"  log             {rel(log_path)}")
    print(f"  overlays        {', '.join(rel(p) for p in overlays)}")


if __name__ == "__main__":
    main()
