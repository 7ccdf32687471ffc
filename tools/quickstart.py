#!/usr/bin/env python
"""`make quickstart`: the whole pipeline on the built-in ToyWorld, on a CPU, in minutes.

1. generate ToyWorld (cached), 2. train the tiny CLIP on its captions (cached),
3. run train_net.py with the project's best method on ToyWorld and evaluate it (seen / unseen mIoU),
4. write demo overlays of a few validation images.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import ovss_d2  # noqa: E402,F401
from tqdm import tqdm  # noqa: E402

# The best trained method the project has; each method issue moves this forward.
METHOD = {"name": "SED (tiny, trained on ToyWorld)", "config": "configs/toy/sed_toy.yaml", "train": True}


def run_train_net(config: str, output_dir: str, train: bool, log_path: str) -> dict:
    cmd = [sys.executable, os.path.join(REPO, "train_net.py"), "--config-file", os.path.join(REPO, config)]
    if not train:
        cmd.append("--eval-only")
    cmd += ["OUTPUT_DIR", output_dir]
    print("  $ " + " ".join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in cmd[1:]))
    from ovss_d2.engine import load_config

    max_iter = load_config(os.path.join(REPO, config)).SOLVER.MAX_ITER if train else 0
    with open(log_path, "w") as log, tqdm(total=max_iter or None, desc="  train_net", unit="it",
                                          disable=not train) as bar:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            m = re.search(r"iter: (\d+)", line)
            if m and train:
                bar.n = int(m.group(1)) + 1
                bar.refresh()
        if proc.wait() != 0:
            sys.exit(f"train_net.py failed (exit {proc.returncode}); see {log_path}")
    with open(os.path.join(output_dir, "inference", "toyworld_val", "sem_seg_evaluation.json")) as f:
        return json.load(f)


def write_overlays(config: str, weights: str, out_dir: str, n: int = 4) -> list:
    import numpy as np
    import torch
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from PIL import Image

    from ovss_d2.checkpoint import OVSSCheckpointer
    from ovss_d2.data import SemSegDatasetMapper
    from ovss_d2.engine import OVSSTrainer, load_config
    from ovss_d2.utils import draw_overlay

    cfg = load_config(os.path.join(REPO, config))
    model = OVSSTrainer.build_model(cfg).eval()
    if weights:
        OVSSCheckpointer(model).load(weights)
    names = MetadataCatalog.get("toyworld_val").stuff_classes
    model.set_vocabulary(names)
    mapper = SemSegDatasetMapper(cfg, is_train=False)
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for d in DatasetCatalog.get("toyworld_val")[:n]:
        with torch.no_grad():
            pred = model([mapper(d)])[0]["sem_seg"].argmax(0).numpy()
        image = np.asarray(Image.open(d["file_name"]).convert("RGB"))
        big = lambda a: np.kron(a, np.ones((3, 3, 1) if a.ndim == 3 else (3, 3), a.dtype))  # noqa: E731
        path = os.path.join(out_dir, os.path.basename(d["file_name"]))
        Image.fromarray(draw_overlay(big(image), big(pred), names)).save(path)
        paths.append(path)
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=os.path.join(REPO, "output", "quickstart"))
    args = parser.parse_args()
    t0 = time.time()
    from ovss_d2.data import toyworld

    print("[1/4] ToyWorld")
    root = toyworld.generate()
    print(f"  {root}")
    t1 = time.time()
    print("[2/4] tiny CLIP trained on ToyWorld captions (cached after the first run)")
    subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_tiny_clip.py")], check=True, cwd=REPO)
    t2 = time.time()
    print(f"[3/4] {METHOD['name']}: {'train and evaluate' if METHOD['train'] else 'evaluate'} on ToyWorld")
    method_dir = os.path.join(args.output, "method")
    os.makedirs(method_dir, exist_ok=True)
    log_path = os.path.join(args.output, "train_net.log")
    res = run_train_net(METHOD["config"], method_dir, METHOD["train"], log_path)
    t3 = time.time()
    print("[4/4] demo overlays")
    weights = os.path.join(method_dir, "model_final.pth") if METHOD["train"] else ""
    overlays = write_overlays(METHOD["config"], weights, os.path.join(args.output, "demo"))
    t4 = time.time()
    print("\n==== quickstart summary ====")
    print(f"method            {METHOD['name']} ({METHOD['config']})")
    print(f"ToyWorld val      mIoU {res['mIoU']:.1f}  |  seen mIoU {res['mIoU-seen']:.1f}  |  "
          f"unseen mIoU {res['mIoU-unseen']:.1f}  |  pixel acc {res['pACC']:.1f}")
    print(f"time              data {t1 - t0:.0f}s, tiny CLIP {t2 - t1:.0f}s, method {t3 - t2:.0f}s, "
          f"demo {t4 - t3:.0f}s, total {t4 - t0:.0f}s")
    print(f"outputs           {os.path.relpath(args.output, os.getcwd())}/")
    metrics = os.path.join(method_dir, "inference", "toyworld_val", "sem_seg_evaluation.json")
    print(f"  metrics         {os.path.relpath(metrics, os.getcwd())}")
    print(f"  log             {os.path.relpath(log_path, os.getcwd())}")
    print(f"  overlays        {', '.join(os.path.relpath(p, os.getcwd()) for p in overlays)}")


if __name__ == "__main__":
    main()
