"""What every ``datasets/prepare_*.py`` script shares: the command line, input checks that name the
missing archive, the parallel, resumable conversion loop with a progress bar, atomic writing of
8-/16-bit label maps and images, and the completion marker the start-up check reads.

A conversion is a list of :class:`Item` s (one source sample -> its output files) and a picklable
function ``convert(item)`` that writes ``item.outputs``. :func:`run_preparation`

- skips items whose outputs all exist (every file is written to ``<name>.part`` and renamed, so an
  existing output is a complete one): an interrupted run resumes where it stopped, a second run
  writes nothing;
- converts the rest over ``--workers`` processes with a tqdm bar;
- writes ``prepared.json`` into every output folder last, with the number of files the folder must
  hold. Until then the folder counts as half-prepared: :func:`~.register.verify_sem_seg_dataset`
  (run at start-up) refuses it and names the prepare command.
"""
import argparse
import json
import multiprocessing as mp
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..io import atomic_output

PREPARED_MARKER = "prepared.json"
MARKER_FORMAT = 1


class MissingInputError(FileNotFoundError):
    """An input of a prepare script (an unpacked archive) is not where the script looks for it."""


class PreparationError(RuntimeError):
    """A source file could not be converted (the message names it)."""


# ---- command line ------------------------------------------------------------------------------
def default_datasets_root() -> str:
    """detectron2's dataset root: ``$DETECTRON2_DATASETS``, default ``datasets``."""
    return os.environ.get("DETECTRON2_DATASETS", "datasets")


def prepare_argument_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=default_datasets_root(),
                        help="dataset root (default: $DETECTRON2_DATASETS, else ./datasets)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="parallel processes (default: min(8, CPU count))")
    parser.add_argument("--overwrite", action="store_true",
                        help="convert every file again (default: keep outputs that exist)")
    return parser


def run_cli(main: Callable[[Optional[Sequence[str]]], Any], argv: Optional[Sequence[str]] = None) -> int:
    """Run a prepare script's ``main``; a missing input or a bad source file exits with status 2
    and the message (no traceback)."""
    try:
        main(argv)
    except (MissingInputError, PreparationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


# ---- inputs ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RequiredInput:
    """A file or folder a script reads, and the official archive that provides it."""
    path: str
    archive: str
    url: str
    how: str = ""  # where to unpack it, e.g. "unpack it in <root>"


def check_inputs(inputs: Iterable[RequiredInput]) -> None:
    """Raise :class:`MissingInputError` naming every missing input, its archive, URL and place."""
    missing = [i for i in inputs if not os.path.exists(i.path)]
    if missing:
        lines = [f"{i.path} not found: it comes from {i.archive} ({i.url})" + (f"; {i.how}" if i.how else "")
                 for i in missing]
        raise MissingInputError("missing input" + ("s" if len(lines) > 1 else "") + ":\n  "
                                + "\n  ".join(lines) + "\nSee datasets/README.md.")


def require_files(paths: Sequence[str], what: str, source: RequiredInput, tolerance: float = 0.0) -> List[str]:
    """The paths among ``paths`` that do not exist. More than ``tolerance`` (a fraction) missing is
    a :class:`MissingInputError` that names a few of them and the archive they come from."""
    missing = [p for p in paths if not os.path.exists(p)]
    if missing and len(missing) > tolerance * len(paths):
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise MissingInputError(
            f"{len(missing)} of {len(paths)} {what} are missing ({shown}): they come from {source.archive} "
            f"({source.url}){'; ' + source.how if source.how else ''}. Is the archive completely unpacked?")
    return missing


def read_id_list(path: str) -> List[str]:
    """Image ids of a split file (one id per line, e.g. VOC ``ImageSets/Segmentation/val.txt``)."""
    with open(path) as f:
        return [line.split()[0] for line in f if line.strip()]


# ---- writing -----------------------------------------------------------------------------------
def write_jpeg(path: str, image: np.ndarray) -> None:
    """(H, W, 3) or (H, W) uint8 image as JPEG (Pillow's default quality, as the official scripts)."""
    with atomic_output(path) as tmp:
        Image.fromarray(image).save(tmp, format="JPEG")


# ---- the conversion loop -------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    """One source sample: ``inputs`` are read, ``outputs`` written by the conversion function;
    ``payload`` carries anything else it needs (e.g. the sample's COCO annotations)."""
    key: str
    inputs: Tuple[str, ...]
    outputs: Tuple[str, ...]
    payload: Any = None


@dataclass(frozen=True)
class OutputFolder:
    """A folder the conversion fills (one registered dataset's labels). ``info`` goes into its
    marker (class count, ignore label, ...), ``count_ext`` selects the files counted in it."""
    path: str
    info: Dict[str, Any]
    count_ext: str = ".png"


class _Guarded:
    """Calls ``fn(item)``; any error becomes a :class:`PreparationError` naming the item's inputs."""

    def __init__(self, fn: Callable[[Item], None]):
        self.fn = fn

    def __call__(self, item: Item) -> str:
        try:
            self.fn(item)
        except (PreparationError, MissingInputError):
            raise
        except Exception as e:  # noqa: BLE001 - any decoder error means the same to the user
            raise PreparationError(f"cannot convert {item.key} ({', '.join(item.inputs)}): "
                                   f"{type(e).__name__}: {e}") from e
        return item.key


def parallel_map(fn: Callable[[Item], Any], items: Sequence[Item], workers: int, desc: str) -> None:
    """``fn`` over ``items`` in ``workers`` processes (inline for one), with a progress bar."""
    guarded = _Guarded(fn)
    with tqdm(total=len(items), desc=desc, unit="file", dynamic_ncols=True) as bar:
        if workers <= 1 or len(items) <= 1:
            for item in items:
                guarded(item)
                bar.update()
            return
        chunk = max(1, min(64, len(items) // (workers * 8)))
        with mp.get_context("fork" if sys.platform.startswith("linux") else "spawn").Pool(workers) as pool:
            for _ in pool.imap_unordered(guarded, items, chunksize=chunk):
                bar.update()


def _existing_files(paths: Iterable[str]) -> set:
    by_dir = defaultdict(list)
    for p in paths:
        by_dir[os.path.dirname(p)].append(p)
    found = set()
    for d, ps in by_dir.items():
        names = set(os.listdir(d)) if os.path.isdir(d) else set()
        found.update(p for p in ps if os.path.basename(p) in names)
    return found


def marker_path(folder: str) -> str:
    return os.path.join(folder, PREPARED_MARKER)


def read_marker(folder: str) -> Optional[Dict[str, Any]]:
    """The completion marker of a prepared folder, or None when there is none (never prepared, or
    the preparation did not finish)."""
    path = marker_path(folder)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _write_marker(folder: str, content: Dict[str, Any]) -> bool:
    if read_marker(folder) == content:
        return False
    with atomic_output(marker_path(folder)) as tmp:
        with open(tmp, "w") as f:
            json.dump(content, f, indent=1)
    return True


def run_preparation(items: Sequence[Item], convert: Callable[[Item], None], folders: Sequence[OutputFolder], *,
                    script: str, workers: int = 1, overwrite: bool = False, desc: str = "") -> Dict[str, int]:
    """Convert ``items`` (skipping finished ones unless ``overwrite``), then mark each of ``folders``
    complete with the number of its files. Returns ``{"converted": n, "skipped": m}``.

    ``script`` names the command that prepared the data (recorded in the markers)."""
    if not items:
        raise PreparationError(f"{script}: nothing to convert (no source samples found).")
    outputs = [o for it in items for o in it.outputs]
    if len(set(outputs)) != len(outputs):
        raise PreparationError(f"{script}: two source samples map to the same output file.")
    done = set() if overwrite else _existing_files(outputs)
    todo = [it for it in items if not all(o in done for o in it.outputs)]
    if todo:  # the folders are half-prepared from now until the markers are rewritten
        for folder in folders:
            if os.path.isfile(marker_path(folder.path)):
                os.remove(marker_path(folder.path))
        parallel_map(convert, todo, workers, desc or script)
    for folder in folders:
        where = os.path.normpath(folder.path)
        expected = [o for o in outputs if os.path.normpath(os.path.dirname(o)) == where
                    and o.endswith(folder.count_ext)]
        if not expected:
            raise PreparationError(f"{script}: no output was meant for {folder.path}.")
        content = {"prepared_by": script, "format": MARKER_FORMAT, "files": len(expected), **folder.info}
        _write_marker(folder.path, content)
    return {"converted": len(todo), "skipped": len(items) - len(todo)}


def summary(result: Dict[str, int], folders: Sequence[OutputFolder]) -> str:
    where = ", ".join(f.path for f in folders)
    return (f"{result['converted']} converted, {result['skipped']} already done; "
            f"ready: {where}")
