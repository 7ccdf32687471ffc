"""On-disk cache of ZeroSeg's teacher features: the CLIP embeddings of every grid view of every
training image (the only augmentation is a centre crop, so they never change).

Layout of a cache directory::

    index.json          what was computed: teacher, views (grids, the size each view is resized to),
                        crop size, shard size, the image list
    shard_00000.npy     (n, V, D) float16, images [0, shard_size) of the list, in order
    shard_00001.npy     ...

Shards are written to a temporary name and renamed, so a shard file is always complete; an
interrupted run, started again, computes only the missing shards and ends with the same files
as an uninterrupted one. ``index.json`` is written last, once every shard exists.
"""
import json
import logging
import os
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

logger = logging.getLogger(__name__)

CACHE_VERSION = 1
BUILD_COMMAND = "python tools/cache_teacher_features.py --config-file <config> [--num-gpus N]"


def shard_path(root: str, shard: int) -> str:
    return os.path.join(root, f"shard_{shard:05d}.npy")


def cache_description(teacher: str, grids: Sequence[int], size: int, files: Sequence[str], shard_size: int,
                      crop_size: Optional[int] = None) -> Dict:
    """``size``: what every view is resized to for the teacher; ``crop_size``: the training crop the
    views are cut from (default ``size``)."""
    return {"version": CACHE_VERSION, "teacher": teacher, "grids": list(grids), "size": int(size),
            "crop_size": int(crop_size or size), "shard_size": int(shard_size), "num_images": len(files),
            "files": list(files)}


def write_shards(root: str, records: List[Dict], compute: Callable[[List[Dict]], np.ndarray], shard_size: int,
                 rank: int = 0, world_size: int = 1, max_shards: Optional[int] = None,
                 progress: bool = True) -> List[int]:
    """Compute the missing shards of this rank (shards ``rank``, ``rank + world_size``, ...).

    ``compute(records)`` maps the records of one shard to their (n, V, D) features (loading each
    image as the training mapper does). ``max_shards`` stops after that many new shards (used to
    test interruption). Returns the shards written by this call."""
    os.makedirs(root, exist_ok=True)
    shards = range(rank, (len(records) + shard_size - 1) // shard_size, world_size)
    todo = [s for s in shards if not os.path.isfile(shard_path(root, s))]
    if max_shards is not None:
        todo = todo[:max_shards]
    for s in tqdm(todo, unit="shard", desc=f"teacher features (rank {rank})", disable=not progress):
        feats = compute(records[s * shard_size:(s + 1) * shard_size]).astype(np.float16)
        tmp = shard_path(root, s) + f".partial-{os.getpid()}"
        with open(tmp, "wb") as f:
            np.save(f, feats)
        os.replace(tmp, shard_path(root, s))
    return todo


def finalize(root: str, description: Dict) -> bool:
    """Write ``index.json`` when every shard exists (returns whether it did); drop stale partials."""
    n = (description["num_images"] + description["shard_size"] - 1) // description["shard_size"]
    if not all(os.path.isfile(shard_path(root, s)) for s in range(n)):
        return False
    for f in os.listdir(root):
        if ".partial-" in f:
            os.remove(os.path.join(root, f))
    tmp = os.path.join(root, "index.json.partial")
    with open(tmp, "w") as f:
        json.dump(description, f)
    os.replace(tmp, os.path.join(root, "index.json"))
    return True


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
        self.position = {f: i for i, f in enumerate(self.description["files"])}
        self._shards: Dict[int, np.ndarray] = {}

    @classmethod
    def for_config(cls, cfg, root: str) -> "TeacherFeatureCache":
        z = cfg.MODEL.ZEROSEG
        return cls(root, {"teacher": teacher_name(cfg), "grids": list(z.GRIDS), "size": teacher_view_size(cfg),
                          "crop_size": int(cfg.INPUT.CENTER_CROP_SIZE)})

    def __len__(self) -> int:
        return len(self.position)

    def __getitem__(self, file_name: str) -> np.ndarray:
        if file_name not in self.position:
            raise KeyError(f"{file_name} is not in the teacher-feature cache {self.root}: the dataset changed "
                           f"since it was built. Rebuild it with: {BUILD_COMMAND}")
        shard, row = divmod(self.position[file_name], self.description["shard_size"])
        if shard not in self._shards:
            self._shards[shard] = np.load(shard_path(self.root, shard), mmap_mode="r")
        return self._shards[shard][row]


def teacher_view_size(cfg) -> int:
    """The size every view is resized to for the teacher: MODEL.ZEROSEG.TEACHER_VIEW_SIZE, or
    IMAGE_SIZE when it is 0."""
    return int(cfg.MODEL.ZEROSEG.TEACHER_VIEW_SIZE or cfg.MODEL.ZEROSEG.IMAGE_SIZE)


def teacher_name(cfg) -> str:
    """What identifies the teacher's weights in a cache's description. ``toyworld`` names the
    checkpoint file it stands for (its name carries the tiny CLIP's training settings), so a cache
    made with another recipe's teacher is refused."""
    name, pretrained = cfg.MODEL.CLIP.NAME, cfg.MODEL.CLIP.PRETRAINED
    if pretrained == "toyworld":
        from .toyworld.tiny_clip import default_checkpoint_path

        pretrained = f"toyworld:{os.path.basename(default_checkpoint_path(name))}"
    return f"{name}:{pretrained}"
