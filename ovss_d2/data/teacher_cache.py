"""On-disk cache of ZeroSeg's teacher features: the CLIP embeddings of every grid view of every
training image (the only augmentation is a centre crop, so they never change).

Layout of a cache directory::

    index.json          what was computed: teacher, views (grids, the size each view is resized to),
                        crop size, shard size, number of images
    files/              the image list, in cache order (a record table, memory-mapped)
    name_lookup/        64-bit hashes of the file names, sorted, with their rows (memory-mapped):
                        finding an image is a binary search, not a dict of every name per process
    shard_00000.npy     (n, V, D) float16, images [0, shard_size) of the list, in order
    shard_00001.npy     ...

Shards are written to a temporary name and renamed, so a shard file is complete when written; an
interrupted run, started again, computes only the missing shards and ends with the same files
as an uninterrupted one. ``index.json`` is written last, once every shard exists and is whole.
Opening a cache checks every shard's header and size against the index, so a shard truncated or
replaced later is named at start-up (before training), and the cache tool recomputes just those
shards. (Version 1 caches, with the image list inside ``index.json``, are still read.)
"""
import hashlib
import json
import logging
import os
import shutil
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from ..modeling.clip.weights import weights_tag_file
from .record_table import INT, PATH, RecordTable, TableBuilder

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: image list and name lookup as memory-mapped tables (1: the list in index.json)
BUILD_COMMAND = "python tools/cache_teacher_features.py --config-file <config> [--num-gpus N]"


def shard_path(root: str, shard: int) -> str:
    return os.path.join(root, f"shard_{shard:05d}.npy")


def cache_description(teacher: str, grids: Sequence[int], size: int, files: Sequence[str], shard_size: int,
                      crop_size: Optional[int] = None) -> Dict:
    """``size``: what every view is resized to for the teacher; ``crop_size``: the training crop the
    views are cut from (default ``size``). ``files`` (the image list) is written by :func:`finalize`
    as tables beside ``index.json``, not into it."""
    return {"version": CACHE_VERSION, "teacher": teacher, "grids": list(grids), "size": int(size),
            "crop_size": int(crop_size or size), "shard_size": int(shard_size), "num_images": len(files),
            "files": files}


def shard_rows(num_images: int, shard_size: int, shard: int) -> int:
    return min(shard_size, num_images - shard * shard_size)


def check_shard(path: str, rows: int, row_shape: Optional[Sequence[int]] = None) -> Optional[str]:
    """What is wrong with a shard file (None if nothing): missing, not an ``.npy`` file, a shape
    other than (rows, *row_shape) float16, or fewer / more bytes than its header announces (a
    truncated copy). Reads the header only."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(f)
            data_start, size = f.tell(), os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError) as e:
        return f"not a readable .npy file ({e})"
    if dtype != np.float16 or fortran or len(shape) != 3 or shape[0] != rows:
        return f"holds {dtype} {tuple(shape)}, expected float16 ({rows}, views, dims)"
    if row_shape is not None and tuple(shape[1:]) != tuple(row_shape):
        return f"holds rows of shape {tuple(shape[1:])}, the other shards {tuple(row_shape)}"
    expected = data_start + int(np.prod(shape)) * dtype.itemsize
    if size != expected:
        return f"{size} bytes, its header announces {expected} (truncated or damaged)"
    return None


def damaged_shards(root: str, num_images: int, shard_size: int) -> Dict[int, str]:
    """shard -> problem, for every shard of a cache of ``num_images`` that is missing or damaged."""
    problems, row_shape = {}, None
    for s in range((num_images + shard_size - 1) // shard_size):
        problem = check_shard(shard_path(root, s), shard_rows(num_images, shard_size, s), row_shape)
        if problem:
            problems[s] = problem
        elif row_shape is None:
            row_shape = tuple(np.load(shard_path(root, s), mmap_mode="r").shape[1:])
    return problems


def write_shards(root: str, records: Sequence[Dict], compute: Callable[[List[Dict]], np.ndarray], shard_size: int,
                 rank: int = 0, world_size: int = 1, max_shards: Optional[int] = None,
                 progress: bool = True) -> List[int]:
    """Compute the missing or damaged shards of this rank (shards ``rank``, ``rank + world_size``, ...).

    ``compute(records)`` maps the records of one shard to their (n, V, D) features (loading each
    image as the training mapper does). A shard file that exists but is truncated or has the wrong
    shape is named and computed again. ``max_shards`` stops after that many new shards (used to
    test interruption). Returns the shards written by this call."""
    os.makedirs(root, exist_ok=True)
    shards = range(rank, (len(records) + shard_size - 1) // shard_size, world_size)
    todo = []
    for s in shards:
        if not os.path.isfile(shard_path(root, s)):
            todo.append(s)
            continue
        problem = check_shard(shard_path(root, s), shard_rows(len(records), shard_size, s))
        if problem:
            logger.warning(f"Teacher cache: {shard_path(root, s)} is damaged ({problem}); computing it again")
            todo.append(s)
    if max_shards is not None:
        todo = todo[:max_shards]
    for s in tqdm(todo, unit="shard", desc=f"teacher features (rank {rank})", disable=not progress):
        feats = compute(records[s * shard_size:(s + 1) * shard_size]).astype(np.float16)
        tmp = shard_path(root, s) + f".partial-{os.getpid()}"
        with open(tmp, "wb") as f:
            np.save(f, feats)
        os.replace(tmp, shard_path(root, s))
    return todo


def _name_hash(name: str) -> int:
    """Stable signed 64-bit hash of a file name (the same in every process and Python version)."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little",
                          signed=True)


def _file_tables(files: Sequence[str]):
    """(table of the file names in cache order, table of (hash, row) sorted by hash)."""
    names = TableBuilder([("file_name", PATH)])
    hashes = np.empty(len(files), np.int64)
    for i, f in enumerate(files):
        names.add(f)
        hashes[i] = _name_hash(f)
    order = np.argsort(hashes, kind="stable")
    lookup = TableBuilder([("hash", INT), ("row", INT)])
    lookup.extend_rows(zip(hashes[order].tolist(), order.tolist()))
    return names.finish(id_field=None), lookup.finish(id_field=None)


def finalize(root: str, description: Dict) -> bool:
    """Write the image list and ``index.json`` when every shard exists and is whole (returns whether
    it did); drop stale partials."""
    n, shard_size = description["num_images"], description["shard_size"]
    damaged = damaged_shards(root, n, shard_size)
    if damaged:
        if any(p != "missing" for p in damaged.values()):
            logger.warning("Teacher cache incomplete: " + "; ".join(
                f"{shard_path(root, s)}: {p}" for s, p in damaged.items() if p != "missing"))
        return False
    for f in os.listdir(root):
        if ".partial-" in f:
            path = os.path.join(root, f)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    index = os.path.join(root, "index.json")
    if os.path.exists(index):
        os.remove(index)  # a cache is never seen with an index and a half-replaced image list
    names, lookup = _file_tables(description["files"])
    for sub, table in (("files", names), ("name_lookup", lookup)):
        shutil.rmtree(os.path.join(root, sub), ignore_errors=True)
        table.save(os.path.join(root, sub))
    tmp = os.path.join(root, "index.json.partial")
    with open(tmp, "w") as f:
        json.dump({k: v for k, v in description.items() if k != "files"}, f)
    os.replace(tmp, index)
    return True


class _FileNames(Sequence):
    """The cache's image list: ``names[i]``, ``len(names)``, ``names.index(name)`` (binary search
    on the name hashes, then a comparison of the names)."""

    def __init__(self, names: RecordTable, lookup: RecordTable):
        self.names, self.hashes, self.rows = names, lookup.column("hash"), lookup.column("row")

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [r["file_name"] for r in self.names[i]]
        return self.names[i]["file_name"]

    def position(self, name: str) -> Optional[int]:
        h = _name_hash(name)
        j = int(np.searchsorted(self.hashes, h))
        while j < len(self.hashes) and self.hashes[j] == h:
            row = int(self.rows[j])
            if self[row] == name:
                return row
            j += 1
        return None

    def index(self, name: str, *args) -> int:
        row = self.position(name)
        if row is None:
            raise ValueError(f"{name} is not in the list")
        return row

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and self.position(name) is not None


class TeacherFeatureCache:
    """Read side: ``cache[file_name]`` -> (V, D) float16 array (shards memory-mapped on first use)."""

    def __init__(self, root: str, expect: Optional[Dict] = None):
        index = os.path.join(root, "index.json")
        if not os.path.isfile(index):
            raise FileNotFoundError(
                f"Teacher-feature cache {root} is missing or incomplete (no index.json). Build or finish it "
                f"with: {BUILD_COMMAND}, or set MODEL.ZEROSEG.TEACHER_CACHE '' to compute the teacher on the fly.")
        with open(index) as f:
            self.description = json.load(f)
        self.description.setdefault("crop_size", self.description.get("size"))  # caches from before the key
        for key, value in (expect or {}).items():
            if self.description.get(key) != value:
                raise ValueError(
                    f"Teacher-feature cache {root} was computed with {key}={self.description.get(key)!r}, the "
                    f"config asks for {value!r}. Rebuild it into another directory with: {BUILD_COMMAND}")
        self.root = root
        n, shard_size = self.description["num_images"], self.description["shard_size"]
        damaged = damaged_shards(root, n, shard_size)
        if damaged:
            shown = "\n  ".join(f"{shard_path(root, s)}: {p}" for s, p in list(damaged.items())[:20])
            more = f"\n  ... and {len(damaged) - 20} more" if len(damaged) > 20 else ""
            raise ValueError(
                f"Teacher-feature cache {root}: {len(damaged)} of its {(n + shard_size - 1) // shard_size} shards "
                f"are missing or damaged since it was built:\n  {shown}{more}\nRun the cache tool again with the "
                f"same settings; it recomputes only these shards: {BUILD_COMMAND}")
        if isinstance(self.description.get("files"), list):  # version 1: the list in index.json
            names, lookup = _file_tables(self.description["files"])
        else:
            names, lookup = (RecordTable.open(os.path.join(root, sub)) for sub in ("files", "name_lookup"))
        self.files = self.description["files"] = _FileNames(names, lookup)
        self._shards: Dict[int, np.ndarray] = {}

    @classmethod
    def for_config(cls, cfg, root: str) -> "TeacherFeatureCache":
        z = cfg.MODEL.ZEROSEG
        return cls(root, {"teacher": teacher_name(cfg), "grids": list(z.GRIDS), "size": teacher_view_size(cfg),
                          "crop_size": int(cfg.INPUT.CENTER_CROP_SIZE)})

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, file_name: str) -> np.ndarray:
        """(V, D) float16 (a view of the memory-mapped shard)."""
        position = self.files.position(file_name)
        if position is None:
            raise KeyError(f"{file_name} is not in the teacher-feature cache {self.root}: the dataset changed "
                           f"since it was built. Rebuild it with: {BUILD_COMMAND}")
        shard, row = divmod(position, self.description["shard_size"])
        if shard not in self._shards:
            self._shards[shard] = np.load(shard_path(self.root, shard), mmap_mode="r")
        return self._shards[shard][row]

    def batch(self, file_names: Sequence[str]) -> np.ndarray:
        """(B, V, D) float16 copies of the features of ``file_names``."""
        return np.stack([self[f] for f in file_names])


def teacher_view_size(cfg) -> int:
    """The size every view is resized to for the teacher: MODEL.ZEROSEG.TEACHER_VIEW_SIZE, or
    IMAGE_SIZE when it is 0."""
    return int(cfg.MODEL.ZEROSEG.TEACHER_VIEW_SIZE or cfg.MODEL.ZEROSEG.IMAGE_SIZE)


def teacher_name(cfg) -> str:
    """What identifies the teacher's weights in a cache's description. A registered weights tag
    (``toyworld``) names the checkpoint file it stands for (its name carries the tiny CLIP's
    training settings), so a cache made with another recipe's teacher is refused."""
    name, pretrained = cfg.MODEL.CLIP.NAME, cfg.MODEL.CLIP.PRETRAINED
    path = weights_tag_file(pretrained, name)
    if path is not None:
        pretrained = f"{pretrained}:{os.path.basename(path)}"
    return f"{name}:{pretrained}"
