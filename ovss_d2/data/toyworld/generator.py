"""Deterministic ToyWorld scene generator.

Each image: a textured stuff background (one or two stuff classes split by a wavy horizon) and
1-3 coloured shapes, a dense label map and a caption. Train images contain seen classes only;
val images contain seen and unseen ones. Every image is drawn from its own RNG (seed, split,
index), so any subset can be regenerated alone and two runs give byte-identical files.

On disk (``root``)::

    train/images/000000.png   RGB
    train/labels/000000.png   uint8 ids in the train vocabulary (SEEN_CLASSES)
    train/annotations.jsonl   {"image", "label", "caption", "objects": [{"name", "box"}], "stuff_boxes"}
    val/...                   ids in the full vocabulary (ALL_CLASSES)
    meta.json                 vocabularies, sizes, generator version
    DONE                      written last
"""
import json
import os
import shutil
from typing import Dict, List, Optional

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from .vocabulary import ALL_CLASSES, COLORS, OBJECTS, SEEN_CLASSES, STUFF, UNSEEN_CLASSES

GENERATOR_VERSION = 1
DEFAULT_SIZES = {"train": 2000, "val": 200}
SPLIT_IDS = {"train": 0, "val": 1}
IMAGE_SIZE = 128
SEED = 20231001


# ---- textures (H, W, 3) float32 ---------------------------------------------------------------
def _noise(rng, h, w, scale):
    small = rng.random((max(2, h // scale), max(2, w // scale)), dtype=np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _texture(name: str, rng, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    if name == "grass":
        base = np.array([70, 125, 45], np.float32)
        blades = (rng.random((h, w)) < 0.25).astype(np.float32) * 35
        return base + (_noise(rng, h, w, 8)[..., None] - 0.5) * 50 + blades[..., None] * np.array([0.3, 0.8, 0.2])
    if name == "sand":
        base = np.array([214, 184, 128], np.float32)
        grain = (rng.random((h, w, 1), dtype=np.float32) - 0.5) * 40
        return base + grain + (_noise(rng, h, w, 16)[..., None] - 0.5) * 30
    if name == "water":
        phase = rng.uniform(0, 2 * np.pi)
        waves = np.sin(yy / 3.0 + np.sin(xx / 9.0 + phase) * 2.0)[..., None]
        return np.array([40, 95, 150], np.float32) + waves * np.array([12, 20, 28], np.float32)
    if name == "sky":
        t = (yy / max(h - 1, 1))[..., None]
        clouds = np.clip(_noise(rng, h, w, 24) - 0.6, 0, 1)[..., None] * 180
        return np.array([110, 170, 230], np.float32) * (1 - t) + np.array([175, 210, 240], np.float32) * t + clouds
    if name == "wall":
        img = np.full((h, w, 3), 150, np.float32) + (_noise(rng, h, w, 4)[..., None] - 0.5) * 30
        brick_h, brick_w = 10, 20
        off = rng.integers(0, brick_w)
        mortar = (yy % brick_h < 2) | (((xx + off + (yy // brick_h % 2) * brick_w // 2) % brick_w) < 2)
        img[mortar] = 95
        return img * np.array([1.0, 0.92, 0.88], np.float32)
    raise KeyError(name)


# ---- shapes ---------------------------------------------------------------------------------------
def _shape_mask(shape: str, cx: int, cy: int, r: int, angle: float, h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    if shape == "circle":
        cv2.circle(mask, (cx, cy), r, 1, -1, lineType=cv2.LINE_8)
        return mask.astype(bool)
    if shape == "square":
        n, rad, start = 4, r * 1.25, angle + np.pi / 4
    elif shape == "triangle":
        n, rad, start = 3, r * 1.3, angle - np.pi / 2
    elif shape == "star":
        t = angle - np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r * 1.35, r * 0.55)
        pts = np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
        return mask.astype(bool)
    else:
        raise KeyError(shape)
    t = start + np.arange(n) * 2 * np.pi / n
    pts = np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], 1)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return mask.astype(bool)


_STUFF_PHRASE = {"grass": "on the grass", "sand": "on the sand", "water": "in the water",
                 "sky": "under the sky", "wall": "in front of a wall"}


def _caption(objects: List[str], stuff: List[str]) -> str:
    names = [f"a {o}" for o in objects]
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    return f"{text} {' '.join(_STUFF_PHRASE[s] for s in stuff)}."


def render_scene(split: str, index: int, size: int = IMAGE_SIZE, seed: int = SEED) -> Dict:
    """One scene: ``image`` (H, W, 3) uint8, ``label`` (H, W) uint8 ids in ALL_CLASSES,
    ``caption``, ``objects`` [{"name", "box": [x0, y0, x1, y1]}], ``stuff`` names,
    ``stuff_boxes`` [{"name", "box"}] (square windows of a single stuff class)."""
    rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
    h = w = size
    label = np.zeros((h, w), np.uint8)
    if rng.random() < 0.25:
        stuff = [str(rng.choice(STUFF))]
        img = _texture(stuff[0], rng, h, w)
        label[:] = ALL_CLASSES.index(stuff[0])
    else:
        top = str(rng.choice(["sky", "wall"]))
        bottom = str(rng.choice(["grass", "sand", "water"]))
        base = rng.uniform(0.3, 0.65) * h
        xs = np.arange(w)
        horizon = (base + np.sin(xs / rng.uniform(8, 20) + rng.uniform(0, 6)) * rng.uniform(0, 5)).astype(int)
        below = np.arange(h)[:, None] >= horizon[None, :]
        img = np.where(below[..., None], _texture(bottom, rng, h, w), _texture(top, rng, h, w))
        label[:] = ALL_CLASSES.index(top)
        label[below] = ALL_CLASSES.index(bottom)
        stuff = [bottom, top]
    stuff_label = label.copy()
    allowed = OBJECTS if split != "train" else tuple(o for o in OBJECTS if o not in UNSEEN_CLASSES)
    objects = []
    for _ in range(int(rng.integers(1, 4))):
        name = str(rng.choice(allowed))
        color, shape = name.split()
        r = int(rng.integers(size // 14, size // 6))
        cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
        mask = _shape_mask(shape, cx, cy, r, float(rng.uniform(0, 2 * np.pi)), h, w)
        rgb = np.array(COLORS[color], np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
        shade = 1.0 + (rng.random((h, w, 1), dtype=np.float32) - 0.5) * 0.12
        img = np.where(mask[..., None], rgb * shade, img)
        label[mask] = ALL_CLASSES.index(name)
        ys, xs_ = np.nonzero(mask)
        objects.append({"name": name, "box": [int(xs_.min()), int(ys.min()), int(xs_.max()) + 1, int(ys.max()) + 1]})
    # occluded objects keep their name only if still visible
    visible = []
    for o in objects:
        x0, y0, x1, y1 = o["box"]
        if (label[y0:y1, x0:x1] == ALL_CLASSES.index(o["name"])).sum() >= 20:
            visible.append(o)
    objects = visible or objects[-1:]
    stuff_boxes = []
    for s in stuff:
        sid = ALL_CLASSES.index(s)
        for _ in range(8):
            win = size // 4
            x0, y0 = int(rng.integers(0, w - win)), int(rng.integers(0, h - win))
            if (label[y0:y0 + win, x0:x0 + win] == sid).all() and (stuff_label[y0:y0 + win, x0:x0 + win] == sid).all():
                stuff_boxes.append({"name": s, "box": [x0, y0, x0 + win, y0 + win]})
                break
    return {
        "image": np.clip(img, 0, 255).astype(np.uint8), "label": label,
        "caption": _caption([o["name"] for o in objects], stuff),
        "objects": objects, "stuff": stuff, "stuff_boxes": stuff_boxes,
    }


def default_root() -> str:
    cache = os.environ.get("OVSS_D2_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ovss_d2"))
    return os.path.join(cache, "toyworld", f"v{GENERATOR_VERSION}")


def is_generated(root: str) -> bool:
    return os.path.isfile(os.path.join(root, "DONE"))


def generate(root: Optional[str] = None, sizes: Optional[Dict[str, int]] = None, progress: bool = True) -> str:
    """Write ToyWorld to ``root`` (default: the cache) unless it is there already; returns root.

    Written to a temporary sibling folder and renamed at the end, so an interrupted run leaves
    nothing half-made and concurrent processes do not collide."""
    root = root or default_root()
    sizes = dict(sizes or DEFAULT_SIZES)
    if is_generated(root):
        return root
    tmp = f"{root}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    train_ids = {c: i for i, c in enumerate(SEEN_CLASSES)}
    for split, n in sizes.items():
        for sub in ("images", "labels"):
            os.makedirs(os.path.join(tmp, split, sub), exist_ok=True)
        records = []
        for i in tqdm(range(n), desc=f"ToyWorld {split}", disable=not progress, unit="img"):
            scene = render_scene(split, i)
            label = scene["label"]
            if split == "train":  # ids in the training vocabulary
                lut = np.full(256, 255, np.uint8)
                for c, j in train_ids.items():
                    lut[ALL_CLASSES.index(c)] = j
                label = lut[label]
            stem = f"{i:06d}"
            Image.fromarray(scene["image"]).save(os.path.join(tmp, split, "images", stem + ".png"))
            Image.fromarray(label).save(os.path.join(tmp, split, "labels", stem + ".png"))
            records.append({"image": f"images/{stem}.png", "label": f"labels/{stem}.png",
                            "caption": scene["caption"], "objects": scene["objects"],
                            "stuff_boxes": scene["stuff_boxes"]})
        with open(os.path.join(tmp, split, "annotations.jsonl"), "w") as f:
            for r in records:
                f.write(json.dumps(r, sort_keys=True) + "\n")
    meta = {"version": GENERATOR_VERSION, "seed": SEED, "image_size": IMAGE_SIZE, "sizes": sizes,
            "all_classes": list(ALL_CLASSES), "seen_classes": list(SEEN_CLASSES),
            "unseen_classes": list(UNSEEN_CLASSES), "train_vocabulary": list(SEEN_CLASSES),
            "val_vocabulary": list(ALL_CLASSES)}
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
    with open(os.path.join(tmp, "DONE"), "w") as f:
        f.write("ok\n")
    os.makedirs(os.path.dirname(root) or ".", exist_ok=True)
    try:
        os.rename(tmp, root)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        if not is_generated(root):
            raise
    return root


def read_annotations(root: str, split: str) -> List[Dict]:
    with open(os.path.join(root, split, "annotations.jsonl")) as f:
        return [json.loads(line) for line in f]


