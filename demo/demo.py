#!/usr/bin/env python
"""Segment images and videos with any vocabulary.

    python demo/demo.py --config-file configs/toy/sed_toy.yaml --weights output/toy/sed/model_final.pth \\
        --input photos/ clip.mp4 "more/*.jpg" --vocabulary "cat,dog,grass" --output out/

Inputs: files, globs or folders (walked recursively); images (jpg, png, bmp, tif, webp, ...) and
videos (mp4, avi, mov, mkv, webm). Vocabulary: comma-separated names ("person, people" style
synonyms go in a text file, one class per line), a text file, or ``dataset:<registered name>``.

Per image, under --output (mirroring the input folders):
    <name>_overlay.png   the image blended with the class colours and a legend of classes present
    <name>_label.png     class ids (uint8; uint16 when the vocabulary has more than 255 classes)
    <name>.json          {"image", "size", "classes", "present": {class: pixel fraction}}
Per video: <name>_overlay.mp4 at the source frame rate, and <name>.json with per-frame classes.

Unreadable files are reported and skipped; the run ends with a summary and exits 0 when at least
one input was processed.
"""
import argparse
import glob
import json
import os
import sys
import time
from typing import List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import ovss_d2  # noqa: E402,F401
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--weights", default="", help="model checkpoint (default: the config's MODEL.WEIGHTS)")
    p.add_argument("--input", nargs="+", required=True, help="files, globs or folders")
    p.add_argument("--output", required=True, help="output folder")
    p.add_argument("--vocabulary", required=True, help='"a,b,c", a text file (one class per line), or dataset:NAME')
    p.add_argument("--templates", default="", help="template set name, or templates separated by '|'")
    p.add_argument("--device", default=None)
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--mode", choices=["resize", "slide"], default="resize", help="large-image strategy")
    p.add_argument("--max-size", type=int, default=1024, help="long side of the working resolution")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides KEY VALUE ...")
    return p.parse_args(argv)


def load_vocabulary(spec: str) -> List[str]:
    if spec.startswith("dataset:"):
        from detectron2.data import MetadataCatalog

        return list(MetadataCatalog.get(spec[len("dataset:"):]).stuff_classes)
    if os.path.isfile(spec):
        with open(spec, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip() and not line.startswith("#")]
    return [c.strip() for c in spec.split(",") if c.strip()]


def collect_inputs(specs: List[str]) -> Tuple[List[Tuple[str, str]], List[Tuple[str, str]]]:
    """(path, path relative to its input root) of every file; and (spec, reason) for specs that
    matched nothing."""
    found, missing = [], []
    for spec in specs:
        if os.path.isdir(spec):
            for root, _, files in sorted(os.walk(spec)):
                for f in sorted(files):
                    path = os.path.join(root, f)
                    found.append((path, os.path.relpath(path, spec)))
        elif os.path.isfile(spec):
            found.append((spec, os.path.basename(spec)))
        else:
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                missing.append((spec, "no such file, folder or glob match"))
            found.extend((m, os.path.basename(m)) for m in matches if os.path.isfile(m))
    return found, missing


def save_label(label: np.ndarray, num_classes: int, path: str) -> None:
    dtype = np.uint8 if num_classes <= 255 else np.uint16
    Image.fromarray(label.astype(dtype)).save(path)


def process_video(predictor, path: str, out_stem: str) -> int:
    import cv2

    from ovss_d2.utils import draw_overlay

    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise OSError(f"Cannot open video {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    writer, frames, per_frame = None, 0, []
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            pred = predictor.predict(rgb)
            overlay = draw_overlay(rgb, pred.label, predictor.class_names, fixed_size=True)
            if writer is None:
                writer = cv2.VideoWriter(out_stem + "_overlay.mp4", cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                         (overlay.shape[1], overlay.shape[0]))
            writer.write(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
            per_frame.append(pred.fractions())
            frames += 1
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    if frames == 0:
        raise OSError(f"Video {path} has no readable frame")
    with open(out_stem + ".json", "w") as f:
        json.dump({"video": path, "fps": fps, "frames": frames, "classes": predictor.class_names,
                   "present_per_frame": per_frame}, f, indent=1)
    return frames


def main(argv=None) -> int:
    args = parse_args(argv)
    from ovss_d2.data.io import UnreadableImageError, read_image_rgb
    from ovss_d2.predictor import Predictor
    from ovss_d2.utils import draw_overlay

    vocabulary = load_vocabulary(args.vocabulary)
    templates = None
    if args.templates:
        templates = args.templates.split("|") if "{}" in args.templates else args.templates
    predictor = Predictor(args.config_file, args.weights, opts=args.opts, device=args.device, templates=templates,
                          mode=args.mode, max_size=args.max_size)
    predictor.set_vocabulary(vocabulary)  # the text encoder runs here, once
    inputs, missing = collect_inputs(args.input)
    skipped = list(missing)
    done_images, done_frames = 0, 0
    start = time.perf_counter()
    images = [(p, r) for p, r in inputs if os.path.splitext(p)[1].lower() in IMAGE_EXTS]
    videos = [(p, r) for p, r in inputs if os.path.splitext(p)[1].lower() in VIDEO_EXTS]
    skipped += [(p, "not an image or video file") for p, _ in inputs
                if os.path.splitext(p)[1].lower() not in IMAGE_EXTS | VIDEO_EXTS]
    bar = tqdm(total=len(images) + len(videos), desc="demo", unit="file")
    for i in range(0, len(images), args.batch_size):
        batch, arrays = [], []
        for path, rel in images[i:i + args.batch_size]:
            try:
                arrays.append(read_image_rgb(path))
                batch.append((path, rel))
            except UnreadableImageError as e:
                skipped.append((path, str(e)))
                bar.update(1)
        if not batch:
            continue
        for (path, rel), image, pred in zip(batch, arrays, predictor.predict_batch(arrays)):
            stem = os.path.join(args.output, os.path.splitext(rel)[0])
            os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
            Image.fromarray(draw_overlay(image, pred.label, vocabulary)).save(stem + "_overlay.png")
            save_label(pred.label, len(vocabulary), stem + "_label.png")
            with open(stem + ".json", "w") as f:
                json.dump({"image": path, "size": list(image.shape[:2]), "classes": vocabulary,
                           "present": pred.fractions()}, f, indent=1)
            done_images += 1
            bar.update(1)
    for path, rel in videos:
        stem = os.path.join(args.output, os.path.splitext(rel)[0])
        os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
        try:
            done_frames += process_video(predictor, path, stem)
        except OSError as e:
            skipped.append((path, str(e)))
        bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - start
    n = done_images + done_frames
    print(f"\ndone: {done_images} images, {len(videos) - sum(p in dict(skipped) for p, _ in videos)} videos "
          f"({done_frames} frames); skipped: {len(skipped)}; "
          f"{1000 * elapsed / max(n, 1):.0f} ms per image/frame; outputs in {args.output}")
    for path, reason in skipped:
        print(f"  skipped {path}: {reason}")
    return 0 if n > 0 else 2


if __name__ == "__main__":
    sys.exit(main())
