#!/usr/bin/env python
"""Segment images and videos with any vocabulary.

    python demo/demo.py --config-file configs/toy/sed_toy.yaml --weights output/toy/sed/model_final.pth \\
        --input photos/ clip.mp4 "more/*.jpg" --vocabulary "cat,dog,grass" --output out/

Inputs: files, globs, folders (walked recursively) or ``dataset:<registered dataset>`` (its
images); images (jpg, png, bmp, tif, webp, ...) and videos (mp4, avi, mov, mkv, webm). Vocabulary:
comma-separated names, a text file (one class per line; "person, people" style synonyms), or
``dataset:<registered dataset>`` (its class names).

Outputs, under --output, named by each input's path relative to the inputs' common folder
(``photos/a.jpg`` -> ``photos/a``); where two inputs would share a name (``real.png`` and
``real.mp4``) their extension is kept (``real_png``, ``real_mp4``). Nothing is overwritten within a
run; the summary lists every renamed input. --output must not be an input folder or inside one,
nor put outputs into a folder that holds inputs (they would replace the user's files beside them
and be read as inputs by the next run); files under --output named as its outputs (``*_overlay.png``,
``*_label.png``, ``*_overlay.mp4``, an interrupted run's ``*_overlay.part.mp4``) are not read as inputs.
Per image:
    <name>_overlay.png   the image blended with the class colours and a legend of classes present
    <name>_label.png     class ids (uint8; uint16 when the vocabulary has more than 255 classes)
    <name>.json          {"image", "size", "classes", "present": {class: pixel fraction}}
Per video: <name>_overlay.mp4 at the source frame rate, and <name>.json with per-frame classes.
A video that ends before the frame count its container declares (damaged or truncated) is reported
as incomplete, not done; its outputs cover the frames read. Every output file is written under a
temporary name and renamed when complete; a file that cannot be written (e.g. a full disk) is
reported, the input's partial outputs are removed, and a full disk ends the run with the summary.

``--limit N`` processes only the first N images and videos. Arguments are checked before the
model is built; a bad one ends the run with one line naming the fix. Unreadable files are
reported and skipped; the run ends with a summary and exits 0 when at least one input was
processed (1 when a full disk stopped it, 2 when nothing was processed). Flags may also follow
``--opts KEY VALUE ...``.
"""
import argparse
import errno
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from typing import Dict, List, Tuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import ovss_d2  # noqa: E402,F401
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from ovss_d2.data.datasets.preparation import atomic_output  # noqa: E402
from ovss_d2.data.io import check_label_classes, glob_files, save_label  # noqa: E402
from ovss_d2.predictor import check_sizes  # noqa: E402
from ovss_d2.utils.cli import add_model_arguments, parse_args_anywhere  # noqa: E402
from ovss_d2.utils.vocabulary import DATASET_PREFIX, parse_vocabulary  # noqa: E402

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
REQUIRED = ("config_file", "input", "output", "vocabulary")
# Files a run writes that an input pattern could match again (under --output they are not read).
OUTPUT_SUFFIXES = ("_overlay.png", "_label.png", "_overlay.mp4", "_overlay.part.mp4")


class UsageError(ValueError):
    """A bad argument, reported as one line before any model is built."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, weights_help="model checkpoint (default: the config's MODEL.WEIGHTS)")
    p.add_argument("--input", nargs="+", help="(required) files, globs, folders or dataset:NAME")
    p.add_argument("--output", help="(required) output folder")
    p.add_argument("--vocabulary", help='(required) "a,b,c", a text file (one class per line), or dataset:NAME')
    p.add_argument("--templates", default="", help="template set name, or templates separated by '|'")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--mode", choices=["resize", "slide"], default="resize", help="large-image strategy")
    p.add_argument("--limit", type=int, default=0, help="only the first N images and videos (0: all)")
    return p


def parse_args(argv=None):
    parser = build_parser()
    args = parse_args_anywhere(parser, argv)
    missing = ["--" + k.replace("_", "-") for k in REQUIRED if not getattr(args, k)]
    if missing:
        parser.error(f"the following arguments are required: {', '.join(missing)}")
    return args


class OutputWriteError(OSError):
    """An output file that could not be written (``path``; ``disk_full`` for ENOSPC / EDQUOT)."""

    def __init__(self, path: str, reason: str, disk_full: bool = False):
        super().__init__(f"cannot write {path}: {reason}")
        self.path, self.disk_full = path, disk_full


def dataset_images(name: str) -> List[str]:
    from detectron2.data import DatasetCatalog

    if not name:
        raise UsageError(f"--input {DATASET_PREFIX} names no dataset: write {DATASET_PREFIX}NAME with a registered "
                         "dataset.")
    if name not in DatasetCatalog.list():
        raise UsageError(f"--input {DATASET_PREFIX}{name}: no registered dataset {name!r}.")
    try:
        return [d["file_name"] for d in DatasetCatalog.get(name)]
    except (OSError, ValueError, KeyError) as e:  # e.g. a benchmark not prepared yet: the message says how
        raise UsageError(f"--input {DATASET_PREFIX}{name}: {e.args[0] if e.args else e}") from None


def collect_inputs(specs: List[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
    """Every input file once (in the order given; folders walked in sorted order), and (spec,
    reason) for specs that matched nothing."""
    found, missing = [], []
    for spec in specs:
        if spec.startswith(DATASET_PREFIX):
            found.extend(dataset_images(spec[len(DATASET_PREFIX):]))
        elif os.path.isdir(spec):
            for root, dirs, files in os.walk(spec):
                dirs.sort()
                found.extend(os.path.join(root, f) for f in sorted(files))
        elif os.path.isfile(spec):
            found.append(spec)
        else:
            matches = glob_files(spec)  # each folder once: recursive globs end over symlink loops
            if not matches:
                missing.append((spec, "no such file, folder or glob match"))
            found.extend(matches)
    seen, unique = set(), []
    for path in found:
        key = os.path.realpath(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique, missing


def output_names(paths: List[str]) -> Dict[str, str]:
    """Output name (path under --output, no extension) of every input: its path relative to the
    inputs' common folder without the extension; where names would clash (compared ignoring case,
    as some file systems do) the extension is kept (``real_png``), then a number is added."""
    if not paths:
        return {}
    absolute = [os.path.abspath(p) for p in paths]
    root = os.path.commonpath([os.path.dirname(a) for a in absolute])
    names = {p: os.path.splitext(os.path.relpath(a, root))[0] for p, a in zip(paths, absolute)}

    def clashing():
        count: Dict[str, int] = {}
        for n in names.values():
            count[n.lower()] = count.get(n.lower(), 0) + 1
        return {p for p, n in names.items() if count[n.lower()] > 1}

    for p in clashing():
        names[p] += "_" + os.path.splitext(p)[1].lstrip(".").lower()
    taken = set()
    for p in paths:  # still clashing (e.g. a.PNG and a.png): number them in input order
        name, i = names[p], 2
        while name.lower() in taken:
            name, i = f"{names[p]}_{i}", i + 1
        names[p] = name
        taken.add(name.lower())
    return names


def process_video(predictor, path: str, out_stem: str) -> Tuple[int, int]:
    """Segment every frame of the video ``path`` into ``<out_stem>_overlay.mp4`` and ``<out_stem>.json``.
    Returns (frames read, frames the container declares; 0 when it does not say). Raises
    ``OSError`` when no frame can be read, :class:`OutputWriteError` when an output cannot be written
    completely (nothing of this video is left then)."""
    import cv2

    from ovss_d2.utils import draw_overlay

    cap = cv2.VideoCapture(path)
    if not cap.isOpened():
        raise OSError(f"Cannot open video {path}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    declared = max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    video, part = out_stem + "_overlay.mp4", out_stem + "_overlay.part.mp4"  # the writer picks mp4 by extension
    writer, frames, per_frame, json_written = None, 0, [], False
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            pred = predictor.predict(rgb)
            overlay = draw_overlay(rgb, pred.label, predictor.class_names, fixed_size=True)
            if writer is None:
                try:
                    os.makedirs(os.path.dirname(part) or ".", exist_ok=True)
                except OSError as e:
                    raise OutputWriteError(video, e.strerror or str(e), _is_disk_full(e)) from None
                writer = cv2.VideoWriter(part, cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                         (overlay.shape[1], overlay.shape[0]))
                if not writer.isOpened():
                    raise OutputWriteError(video, "the video writer cannot create it")
            writer.write(cv2.cvtColor(overlay, cv2.COLOR_RGB2BGR))
            per_frame.append(pred.fractions())
            frames += 1
        cap.release()
        if writer is not None:
            writer.release()
        if frames == 0:
            raise OSError(f"Video {path} has no readable frame")
        # OpenCV's writer reports no error (a full disk leaves an unplayable file): read it back
        check = cv2.VideoCapture(part)
        written = int(check.get(cv2.CAP_PROP_FRAME_COUNT)) if check.isOpened() else 0
        check.release()
        if written != frames:
            raise OutputWriteError(video, f"the video writer stored {written} of {frames} frames "
                                          f"({_free_space(part)} free on its disk)", disk_full=_disk_full(part))
        write_json(out_stem + ".json", {"video": path, "fps": fps, "frames": frames, "frames_declared": declared,
                                        "complete": not declared or frames >= declared,
                                        "classes": predictor.class_names, "present_per_frame": per_frame})
        json_written = True
        try:
            os.replace(part, video)
        except OSError as e:
            raise OutputWriteError(video, e.strerror or str(e), _is_disk_full(e)) from None
    except BaseException:
        cap.release()
        if writer is not None:
            writer.release()
        for leftover in (part, out_stem + ".json") if json_written else (part,):
            if os.path.exists(leftover):
                os.remove(leftover)
        raise
    return frames, declared


def _is_disk_full(error: OSError) -> bool:
    return error.errno in (errno.ENOSPC, errno.EDQUOT)


def _free_space(path: str) -> str:
    return f"{shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free:,} bytes"


def _disk_full(path: str) -> bool:
    """Whether the disk of ``path`` has less room than a small output needs (1 MiB)."""
    return shutil.disk_usage(os.path.dirname(os.path.abspath(path))).free < 2**20


def write_json(path: str, data) -> None:
    """``data`` as JSON at ``path``, complete or not at all; :class:`OutputWriteError` if it cannot."""
    try:
        with atomic_output(path) as tmp, open(tmp, "w") as f:
            json.dump(data, f, indent=1)
    except OSError as e:
        raise OutputWriteError(path, e.strerror or str(e), _is_disk_full(e)) from None


def write_image_outputs(stem: str, path: str, image, pred, vocabulary: List[str]) -> None:
    """The overlay, label map and JSON of one image, each complete or absent: when one cannot be
    written, those written before it are removed and :class:`OutputWriteError` names the file."""
    from ovss_d2.utils import draw_overlay

    written, current = [], stem + "_overlay.png"
    try:
        os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
        with atomic_output(current) as tmp:
            Image.fromarray(draw_overlay(image, pred.label, vocabulary)).save(tmp, format="PNG")
        written.append(current)
        current = stem + "_label.png"
        save_label(pred.label, len(vocabulary), current)
        written.append(current)
        current = stem + ".json"
        write_json(current, {"image": path, "size": list(image.shape[:2]), "classes": vocabulary,
                             "present": pred.fractions()})
    except OSError as e:
        for done in written:
            os.remove(done)
        if isinstance(e, OutputWriteError):
            raise
        raise OutputWriteError(current, e.strerror or str(e), _is_disk_full(e)) from None


def check_output_folder(path: str) -> None:
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"--output {path} is a file, not a folder: give a folder (it is created if needed).")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise UsageError(f"--output {path} cannot be written ({e.strerror or e}): give a writable folder.") from None


def _inside(path: str, folder: str) -> bool:
    """Whether the real path ``path`` is ``folder`` or inside it (both real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def split_media(inputs: List[str]) -> Tuple[List[str], List[str]]:
    """(images, videos) among ``inputs``, by extension, in input order."""
    exts = [os.path.splitext(p)[1].lower() for p in inputs]
    return ([p for p, e in zip(inputs, exts) if e in IMAGE_EXTS], [p for p, e in zip(inputs, exts) if e in VIDEO_EXTS])


def check_output_placement(args, inputs: List[str]) -> None:
    """Refuses (:class:`UsageError`) an --output that is an input folder or inside one, or that
    would put an output file into a folder holding one of ``inputs``: outputs there replace the
    user's files of the same name (``IMG_001.json``) and become inputs of the next run."""
    out = os.path.realpath(args.output)
    for spec in args.input:
        if not spec.startswith(DATASET_PREFIX) and os.path.isdir(spec) and _inside(out, os.path.realpath(spec)):
            raise UsageError(f"--output {args.output} is inside the input folder {spec}: the outputs would be written "
                             "among your files and read as inputs by the next run. Give an output folder outside it.")
    images, videos = split_media(inputs)
    input_folders = {os.path.realpath(os.path.dirname(os.path.abspath(p))): p for p in images + videos}
    for path, name in output_names(images + videos).items():
        folder = os.path.realpath(os.path.dirname(os.path.join(args.output, name)))
        if folder in input_folders:
            base = os.path.basename(name)
            raise UsageError(f"--output {args.output} puts outputs into {folder}, which holds the input "
                             f"{input_folders[folder]}: {base}.json, {base}_label.png and {base}_overlay.png there "
                             "would replace files of yours and be read as inputs by the next run. Give an output "
                             "folder that holds no input, e.g. a new one.")


def check_arguments(args) -> Tuple[List[str], object, List[str], List[Tuple[str, str]]]:
    """Everything that can be checked before the model is built: (vocabulary, templates, input
    files, inputs that matched nothing). Raises :class:`UsageError` naming the fix."""
    from ovss_d2.engine import check_weights_file

    if not os.path.isfile(args.config_file):
        raise UsageError(f"--config-file {args.config_file} not found: give a config such as configs/toy/sed_toy.yaml.")
    try:
        check_weights_file(args.weights, "--weights")
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(e.args[0]) from None
    if args.batch_size < 1 or args.limit < 0:
        raise UsageError("--batch-size must be at least 1, --limit at least 0.")
    try:
        check_sizes(args.max_size, max_size_name="--max-size")
    except ValueError as e:
        raise UsageError(str(e)) from None
    if len(args.opts) % 2:
        raise UsageError(f"--opts takes KEY VALUE pairs; got an odd number of items: {' '.join(args.opts)}.")
    try:
        vocabulary = parse_vocabulary(args.vocabulary)
        check_label_classes(len(vocabulary))
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise UsageError(f"--vocabulary: {e.args[0] if e.args else e}") from None
    templates = None
    if args.templates:
        from ovss_d2.modeling.clip import resolve_templates

        # a value with a brace is templates (even a malformed one), else a built-in set's name
        templates = args.templates.split("|") if "{" in args.templates or "}" in args.templates else args.templates
        try:
            resolve_templates(templates) if isinstance(templates, str) else resolve_templates("", templates)
        except ValueError as e:
            raise UsageError(f"--templates: {e}") from None
    inputs, missing = collect_inputs(args.input)
    out = os.path.realpath(args.output)
    kept = [p for p in inputs if not (p.endswith(OUTPUT_SUFFIXES) and _inside(os.path.realpath(p), out))]
    if len(kept) < len(inputs):
        missing.append((args.output, f"{len(inputs) - len(kept)} files inside --output named as this demo's outputs "
                                     f"({', '.join('*' + x for x in OUTPUT_SUFFIXES)}) not read as inputs"))
    inputs = kept
    media = [p for p in inputs if os.path.splitext(p)[1].lower() in IMAGE_EXTS | VIDEO_EXTS]
    if args.limit:
        dropped = set(media[args.limit:])
        inputs = [p for p in inputs if p not in dropped]
        media = media[:args.limit]
    if not media:
        raise UsageError(f"--input {' '.join(args.input)}: no image or video found "
                         f"(images: {', '.join(sorted(IMAGE_EXTS))}; videos: {', '.join(sorted(VIDEO_EXTS))}).")
    check_output_placement(args, inputs)
    check_output_folder(args.output)
    return vocabulary, templates, inputs, missing


def show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"demo.py: warning: {message}", file=sys.stderr)


def build_predictor(args, vocabulary, templates):
    """The Predictor with the vocabulary embedded (the text encoder runs here, once). A config,
    checkpoint or CLIP-weights problem found while building is a :class:`UsageError`."""
    from ovss_d2.predictor import Predictor
    from ovss_d2.utils import DuplicateClassWarning

    try:
        predictor = Predictor(args.config_file, args.weights, opts=args.opts, device=args.device,
                              templates=templates, mode=args.mode, max_size=args.max_size)
    except (OSError, ValueError, KeyError) as e:
        raise UsageError(e.args[0] if e.args else str(e)) from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DuplicateClassWarning)  # reported when the vocabulary was read
        predictor.set_vocabulary(vocabulary)
    return predictor


def run(args, predictor, vocabulary, inputs, skipped) -> int:
    from ovss_d2.data.io import UnreadableImageError, read_image_rgb

    images, videos = split_media(inputs)
    skipped += [(p, "not an image or video file") for p in inputs if p not in images and p not in videos]
    names = output_names(images + videos)
    done_images, done_videos, done_frames, incomplete, stopped = 0, 0, 0, [], None
    start = time.perf_counter()
    bar = tqdm(total=len(images) + len(videos), desc="demo", unit="file")
    for i in range(0, len(images), args.batch_size):
        batch, arrays = [], []
        for path in images[i:i + args.batch_size]:
            try:
                arrays.append(read_image_rgb(path))
                batch.append(path)
            except UnreadableImageError as e:
                skipped.append((path, str(e)))
                bar.update(1)
        if not batch:
            continue
        for path, image, pred in zip(batch, arrays, predictor.predict_batch(arrays)):
            try:
                write_image_outputs(os.path.join(args.output, names[path]), path, image, pred, vocabulary)
                done_images += 1
            except OutputWriteError as e:
                skipped.append((path, f"{e}; its outputs were removed"))
                stopped = stopped or (e if e.disk_full else None)
            bar.update(1)
        if stopped:
            break
    for path in videos if not stopped else ():
        try:
            frames, declared = process_video(predictor, path, os.path.join(args.output, names[path]))
            if declared and frames < declared:
                incomplete.append((path, f"read {frames} of the {declared} frames its container declares (damaged "
                                         f"or truncated after frame {frames}); its outputs cover the frames read"))
            else:
                done_frames += frames
                done_videos += 1
        except OutputWriteError as e:
            skipped.append((path, f"{e}; its outputs were removed"))
            if e.disk_full:
                stopped = e
                break
        except OSError as e:
            skipped.append((path, str(e)))
        bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - start
    n = done_images + done_frames
    left = len(images) + len(videos) - done_images - done_videos - len(incomplete) - \
        sum(1 for p, _ in skipped if p in names)
    print(f"\ndone: {done_images} images, {done_videos} videos ({done_frames} frames); skipped: {len(skipped)}"
          + (f"; incomplete: {len(incomplete)}" if incomplete else "")
          + f"; {1000 * elapsed / max(n, 1):.0f} ms per image/frame; outputs in {args.output}")
    if stopped:
        print(f"  stopped: the disk of {args.output} is full ({stopped}); {left} inputs not processed. Free some "
              "space or give another --output, then run again.")
    root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in names]) if names else ""
    print(f"  output names: input paths relative to {root}, without extension")
    for path, name in names.items():
        if name != os.path.splitext(os.path.relpath(os.path.abspath(path), root))[0]:
            print(f"  renamed {path} -> {os.path.join(args.output, name)}* (another input has its name)")
    for path, reason in incomplete:
        print(f"  incomplete {path}: {reason}")
    for path, reason in skipped:
        print(f"  skipped {path}: {reason}")
    return 1 if stopped else 0 if n > 0 else 2


def main(argv=None) -> int:
    args = parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = show_warning
        try:
            vocabulary, templates, inputs, missing = check_arguments(args)
            predictor = build_predictor(args, vocabulary, templates)
        except UsageError as e:
            print(f"demo.py: error: {e}", file=sys.stderr)
            return 2
        return run(args, predictor, vocabulary, inputs, missing)


if __name__ == "__main__":
    sys.exit(main())
