"""Deterministic ToyWorld scene generator (version 2).

Each image: a textured stuff background (one stuff class, or two split by a wavy horizon: sky or a
wall above, ground below) and 1-3 objects (a colour x pattern class drawn with any outline: circle,
star, ...), a dense label map and a caption. What a split
may show is set by its vocabulary (``SPLITS``): the segmentation training split only the training
classes, the caption corpus the whole world but the held-out pairs, the two evaluation splits
their vocabularies with the unseen classes drawn more often. Every image is drawn from its own RNG
(seed, split, index), so any image can be regenerated alone and two runs give identical files.

On disk (``root``)::

    <split>/images/000000.png   RGB
    <split>/labels/000000.png   uint8 ids in the split's vocabulary (255 = ignore, unused)
    <split>/annotations.jsonl   {"image", "label", "caption", "objects": [{"name", "outline", "box", "area"}],
                                 "stuff": [names], "stuff_boxes": [{"name", "box"}]}
    meta.json                   vocabularies, sizes, generator version
    DONE                        written last
"""
import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from ..paths import TOYWORLD, cache_path
from .vocabulary import (CAPTION_CLASSES, COLORS, NATURAL_STUFF, SHAPES, TRAIN_CLASSES, VAL_CLASSES, VAL_UNSEEN,
                         WIDE_CLASSES, WIDE_UNSEEN, is_object, split_name)

GENERATOR_VERSION = 2
IMAGE_SIZE = 128
SEED = 20231001


@dataclass(frozen=True)
class SplitSpec:
    """What a split shows: ``vocabulary`` (label ids index it), the classes that may be drawn,
    and how often a drawn object / upper stuff is one of ``boosted`` (evaluation splits draw
    their unseen classes more often so that each has enough pixels to be measured)."""
    index: int
    vocabulary: Tuple[str, ...]
    drawable: Tuple[str, ...]
    boosted: Tuple[str, ...] = ()
    boost: float = 0.0


SPLITS: Dict[str, SplitSpec] = {
    "train": SplitSpec(0, TRAIN_CLASSES, TRAIN_CLASSES),
    "val": SplitSpec(1, VAL_CLASSES, VAL_CLASSES, VAL_UNSEEN, 0.35),
    "captions": SplitSpec(2, WIDE_CLASSES, CAPTION_CLASSES),
    "wide_val": SplitSpec(3, WIDE_CLASSES, WIDE_CLASSES, WIDE_UNSEEN, 0.5),
}
DEFAULT_SIZES = {"train": 2000, "captions": 2000, "val": 300, "wide_val": 300}

# Mean colour of each stuff texture, to keep objects visible against what is behind them.
_STUFF_RGB = {"sky": (140, 190, 235), "grass": (70, 125, 45), "sand": (214, 184, 128), "water": (40, 95, 150),
              "snow": (232, 236, 245), "road": (75, 75, 80)}
_MIN_CONTRAST = 90.0  # L2 distance in RGB between an object's colour and the stuff behind it


def _stuff_rgb(name: str) -> np.ndarray:
    colour, kind = split_name(name)
    return np.array(COLORS[colour] if kind == "wall" else _STUFF_RGB[name], np.float32)


# ---- textures (H, W, 3) float32 ---------------------------------------------------------------
def _noise(rng, h, w, scale):
    small = rng.random((max(2, h // scale), max(2, w // scale)), dtype=np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _wall(rng, h, w, colour) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    brick_h, brick_w = 10, 20
    off = int(rng.integers(0, brick_w))
    row = yy // brick_h
    col = (xx + off + (row % 2) * brick_w // 2) // brick_w
    jitter = rng.uniform(-18, 18, (row.max() + 1, col.max() + 1)).astype(np.float32)[row, col]
    img = np.array(colour, np.float32) * 0.85 + jitter[..., None] + (_noise(rng, h, w, 4)[..., None] - 0.5) * 20
    mortar = (yy % brick_h < 2) | (((xx + off + (row % 2) * brick_w // 2) % brick_w) < 2)
    img[mortar] = 110
    return img


def _texture(name: str, rng, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    colour, kind = split_name(name)
    if kind == "wall":
        return _wall(rng, h, w, COLORS[colour])
    if name == "grass":
        blades = (rng.random((h, w)) < 0.25).astype(np.float32) * 35
        return (np.array([70, 125, 45], np.float32) + (_noise(rng, h, w, 8)[..., None] - 0.5) * 50
                + blades[..., None] * np.array([0.3, 0.8, 0.2], np.float32))
    if name == "sand":
        grain = (rng.random((h, w, 1), dtype=np.float32) - 0.5) * 40
        return np.array([214, 184, 128], np.float32) + grain + (_noise(rng, h, w, 16)[..., None] - 0.5) * 30
    if name == "water":
        phase = rng.uniform(0, 2 * np.pi)
        waves = np.sin(yy / 3.0 + np.sin(xx / 9.0 + phase) * 2.0)[..., None]
        return np.array([40, 95, 150], np.float32) + waves * np.array([12, 20, 28], np.float32)
    if name == "sky":
        t = (yy / max(h - 1, 1))[..., None]
        clouds = np.clip(_noise(rng, h, w, 24) - 0.6, 0, 1)[..., None] * 180
        return (np.array([110, 170, 230], np.float32) * (1 - t) + np.array([175, 210, 240], np.float32) * t
                + clouds)
    if name == "snow":
        drift = (_noise(rng, h, w, 12)[..., None] - 0.5) * np.array([30, 24, 10], np.float32)
        sparkle = (rng.random((h, w, 1)) < 0.03).astype(np.float32) * -40
        return np.array([232, 236, 245], np.float32) + drift + sparkle
    if name == "road":
        img = np.array([75, 75, 80], np.float32) + (rng.random((h, w, 1), dtype=np.float32) - 0.5) * 30
        lane = (np.abs(xx - w * rng.uniform(0.3, 0.7)) < 2) & ((yy // 8) % 2 == 0)
        img[lane] = 190
        return img
    raise KeyError(name)


# ---- shapes ---------------------------------------------------------------------------------------
def _polygon(pts: np.ndarray, h: int, w: int) -> np.ndarray:
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return mask.astype(bool)


def _rotate(x: np.ndarray, y: np.ndarray, angle: float) -> Tuple[np.ndarray, np.ndarray]:
    c, s = np.cos(angle), np.sin(angle)
    return x * c - y * s, x * s + y * c


def shape_mask(shape: str, cx: int, cy: int, r: int, angle: float, h: int, w: int) -> np.ndarray:
    """(h, w) bool mask of a shape of radius about ``r`` centred at (cx, cy), rotated by ``angle``."""
    if shape in ("circle", "ring"):
        mask = np.zeros((h, w), np.uint8)
        cv2.circle(mask, (cx, cy), r, 1, -1, lineType=cv2.LINE_8)
        if shape == "ring":
            cv2.circle(mask, (cx, cy), max(2, int(r * 0.5)), 0, -1, lineType=cv2.LINE_8)
        return mask.astype(bool)
    if shape == "square":
        t = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        return _polygon(np.stack([cx + r * 1.2 * np.cos(t), cy + r * 1.2 * np.sin(t)], 1), h, w)
    if shape == "triangle":
        t = angle - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
        return _polygon(np.stack([cx + r * 1.35 * np.cos(t), cy + r * 1.35 * np.sin(t)], 1), h, w)
    if shape == "star":
        t = angle - np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r * 1.35, r * 0.55)
        return _polygon(np.stack([cx + radii * np.cos(t), cy + radii * np.sin(t)], 1), h, w)
    if shape == "cross":
        a, b = 1.15, 0.4  # arm length and half width, in radii
        x = np.array([b, b, a, a, b, b, -b, -b, -a, -a, -b, -b]) * r
        y = np.array([a, b, b, -b, -b, -a, -a, -b, -b, b, b, a]) * r
        x, y = _rotate(x, y, angle)
        return _polygon(np.stack([cx + x, cy + y], 1), h, w)
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)) - 2.5
        x, y = _rotate(x * r / 13.5, y * r / 13.5, angle * 0.3)  # hearts stay roughly upright
        return _polygon(np.stack([cx + x, cy + y], 1), h, w)
    raise KeyError(shape)


def _dark(rgb: np.ndarray) -> np.ndarray:
    return rgb * 0.4 + 10


def pattern_fill(pattern: str, rgb: np.ndarray, cx: float, cy: float, angle: float, h: int, w: int) -> np.ndarray:
    """(h, w, 3) float32 canvas of a pattern in ``rgb`` and its dark tone, in coordinates rotated by
    ``angle`` about (cx, cy); objects cut their pixels out of it. Periods are 6-14 pixels, so a
    16-pixel window of an object shows its pattern."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    u, v = _rotate(xx - cx, yy - cy, angle)
    if pattern == "plain":
        dark = np.zeros((h, w), bool)
    elif pattern == "striped":
        dark = np.floor(u / 4.5).astype(np.int64) % 2 == 0
    elif pattern == "dotted":
        du, dv = (u % 8) - 4, (v % 8) - 4
        dark = du * du + dv * dv <= 4.5
    elif pattern == "checkered":
        dark = (np.floor(u / 6) + np.floor(v / 6)).astype(np.int64) % 2 == 0
    elif pattern == "zigzag":
        tri = np.abs((u / 8) % 1 - 0.5) * 2  # triangle wave 0..1, period 8
        dark = np.floor((v + 6 * tri) / 4.5).astype(np.int64) % 2 == 0
    elif pattern == "hatched":
        dark = (np.abs(((u + v) % 7) - 3.5) < 1.0) | (np.abs(((u - v) % 7) - 3.5) < 1.0)
    elif pattern == "spotted":
        du, dv = (u % 14) - 7, (v % 14) - 7
        dark = du * du + dv * dv <= 18
    else:
        raise KeyError(pattern)
    return np.where(dark[..., None], _dark(rgb), rgb).astype(np.float32)


# ---- captions -------------------------------------------------------------------------------------
_OBJECT_PHRASES = ("{a} {c} {p} {o}", "{a} {c} {p} shape", "a {o} that is {c} and {p}", "one {c} {p} {o}",
                   "{a} {p} {c} {o}")
_STUFF_PHRASES = {"sky": "under the sky", "grass": "on the grass", "sand": "on the sand", "water": "in the water",
                  "snow": "in the snow", "road": "on the road"}


def object_phrase(name: str, outline: str, rng) -> str:
    """"a red striped star", "a star that is red and striped", ... (``outline``: how it is drawn)."""
    colour, pattern = split_name(name)
    phrase = str(rng.choice(_OBJECT_PHRASES))
    first = pattern if phrase.startswith("{a} {p}") else colour
    return phrase.format(a=article(first), c=colour, p=pattern, o=outline)


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def stuff_phrase(name: str) -> str:
    colour, kind = split_name(name)
    return f"in front of a {colour} wall" if kind == "wall" else _STUFF_PHRASES[name]


def caption(objects: List[Tuple[str, str]], stuff: List[str], rng) -> str:
    """A scene caption naming every (object class, outline) and stuff class, in varied words and order."""
    names = [object_phrase(o, outline, rng) for o, outline in objects]
    where = " ".join(stuff_phrase(s) for s in stuff)
    if not names:
        return f"nothing but {where.split(' ', 1)[1]}."
    text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    if rng.random() < 0.3:
        return f"{where}, {text}."
    return f"{text} {where}."


# ---- scenes ---------------------------------------------------------------------------------------
def _pick(rng, pool: Tuple[str, ...], boosted: Tuple[str, ...], boost: float) -> str:
    candidates = [c for c in pool if c in boosted]
    if candidates and rng.random() < boost:
        return str(rng.choice(candidates))
    return str(rng.choice(pool))


def render_scene(split: str, index: int, size: int = IMAGE_SIZE, seed: int = SEED) -> Dict:
    """One scene: ``image`` (H, W, 3) uint8, ``label`` (H, W) uint8 ids in the split's vocabulary,
    ``caption``, ``objects`` [{"name", "outline", "box": [x0, y0, x1, y1], "area"}], ``stuff`` names and
    ``stuff_boxes`` [{"name", "box"}] (square windows of a single stuff class)."""
    spec = SPLITS[split]
    vocab = spec.vocabulary
    rng = np.random.default_rng([seed, spec.index, index])
    h = w = size
    drawable_stuff = tuple(c for c in spec.drawable if not is_object(c))
    uppers = tuple(c for c in drawable_stuff if c == "sky" or split_name(c)[1] == "wall")
    grounds = tuple(c for c in drawable_stuff if c in NATURAL_STUFF and c != "sky")
    objects_pool = tuple(c for c in spec.drawable if is_object(c))
    if rng.random() < 0.25:
        stuff = [_pick(rng, drawable_stuff, spec.boosted, spec.boost)]
        img = _texture(stuff[0], rng, h, w)
        stuff_map = np.zeros((h, w), np.int64)
    else:
        top, bottom = _pick(rng, uppers, spec.boosted, spec.boost), str(rng.choice(grounds))
        base = rng.uniform(0.3, 0.65) * h
        xs = np.arange(w)
        horizon = (base + np.sin(xs / rng.uniform(8, 20) + rng.uniform(0, 6)) * rng.uniform(0, 5)).astype(int)
        below = np.arange(h)[:, None] >= horizon[None, :]
        img = np.where(below[..., None], _texture(bottom, rng, h, w), _texture(top, rng, h, w))
        stuff = [bottom, top]
        stuff_map = (~below).astype(np.int64)  # index into `stuff`
    label = np.array([vocab.index(s) for s in stuff], np.uint8)[stuff_map]
    stuff_label = label.copy()
    objects = []
    for _ in range(int(rng.integers(1, 4))):
        for _attempt in range(10):  # a class visible against what is behind it, little overlap
            name = _pick(rng, objects_pool, spec.boosted, spec.boost)
            if name in [o[0] for o in objects]:
                continue
            colour, pattern = split_name(name)
            outline = str(rng.choice(SHAPES))
            r = int(rng.integers(size // 7, size // 4 + 1))
            cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
            behind = stuff[int(stuff_map[cy, cx])]
            if np.linalg.norm(np.array(COLORS[colour], np.float32) - _stuff_rgb(behind)) < _MIN_CONTRAST:
                continue
            angle = float(rng.uniform(0, 2 * np.pi))
            mask = shape_mask(outline, cx, cy, r, angle, h, w)
            if (mask & (label != stuff_label)).sum() <= 0.15 * mask.sum() and mask.sum() >= 30:
                break
        else:
            continue
        rgb = np.array(COLORS[colour], np.float32) + rng.uniform(-15, 15, 3).astype(np.float32)
        shade = 1.0 + (rng.random((h, w, 1), dtype=np.float32) - 0.5) * 0.12
        fill = pattern_fill(pattern, rgb, cx + rng.uniform(-4, 4), cy + rng.uniform(-4, 4),
                            float(rng.uniform(0, np.pi)), h, w)
        img = np.where(mask[..., None], fill * shade, img)
        label[mask] = vocab.index(name)
        objects.append((name, outline))
    visible = []
    for name, outline in objects:
        ys, xs_ = np.nonzero(label == vocab.index(name))
        visible.append({"name": name, "outline": outline, "area": int(len(ys)),
                        "box": [int(xs_.min()), int(ys.min()), int(xs_.max()) + 1, int(ys.max()) + 1]})
    stuff = [s for s in stuff if (label == vocab.index(s)).any()]
    stuff_boxes = []
    for s in stuff:
        sid = vocab.index(s)
        for _ in range(10):
            win = int(rng.integers(size // 6, size // 3 + 1))
            x0, y0 = int(rng.integers(0, w - win + 1)), int(rng.integers(0, h - win + 1))
            if (label[y0:y0 + win, x0:x0 + win] == sid).all():
                stuff_boxes.append({"name": s, "box": [x0, y0, x0 + win, y0 + win]})
                break
    return {
        "image": np.clip(img, 0, 255).astype(np.uint8), "label": label,
        "caption": caption([(o["name"], o["outline"]) for o in visible], stuff, rng),
        "objects": visible, "stuff": stuff, "stuff_boxes": stuff_boxes,
    }


def default_root() -> str:
    """The cached ToyWorld of this generator version: ``$OVSS_D2_CACHE/toyworld/v<version>``."""
    return cache_path(TOYWORLD, f"v{GENERATOR_VERSION}")


def is_generated(root: str) -> bool:
    return os.path.isfile(os.path.join(root, "DONE"))


class DamagedToyWorldError(OSError):
    """A ToyWorld folder marked complete (DONE) whose files are missing or empty."""


def verify_generated(root: str) -> None:
    """Check a folder marked DONE before it is trusted: meta.json, and per split of its sizes the
    annotations (one line per image) and every image and label file they name, none empty.
    Raises :class:`DamagedToyWorldError` naming what is missing and how to regenerate it."""
    problems: List[str] = []
    try:
        with open(os.path.join(root, "meta.json")) as f:
            sizes = json.load(f)["sizes"]
    except (OSError, ValueError, KeyError, TypeError):
        sizes, problems = {}, ["meta.json (missing or unreadable)"]
    for split, n in sizes.items():
        try:
            records = read_annotations(root, split)
        except (OSError, ValueError):
            problems.append(f"{split}/annotations.jsonl (missing or unreadable)")
            continue
        if len(records) != n:
            problems.append(f"{split}/annotations.jsonl ({len(records)} of {n} images)")
        for sub in ("images", "labels"):
            folder = os.path.join(root, split, sub)
            present = {e.name: e for e in os.scandir(folder)} if os.path.isdir(folder) else {}
            bad = [r[sub[:-1]] for r in records
                   if os.path.basename(r[sub[:-1]]) not in present
                   or present[os.path.basename(r[sub[:-1]])].stat().st_size == 0]
            if bad:
                problems.append(f"{len(bad)} {split} {sub} ({', '.join(f'{split}/{b}' for b in bad[:3])}"
                                f"{', ...' if len(bad) > 3 else ''})")
    if problems:
        raise DamagedToyWorldError(
            f"The ToyWorld cache {root} is damaged (marked complete, but missing or empty: {'; '.join(problems)}). "
            f"Delete the folder (rm -rf {root}); the next run regenerates it.")


def _write_split(tmp: str, split: str, n: int, progress: bool) -> None:
    for sub in ("images", "labels"):
        os.makedirs(os.path.join(tmp, split, sub), exist_ok=True)
    records = []
    for i in tqdm(range(n), desc=f"ToyWorld {split}", disable=not progress, unit="img"):
        scene = render_scene(split, i)
        stem = f"{i:06d}"
        Image.fromarray(scene["image"]).save(os.path.join(tmp, split, "images", stem + ".png"))
        Image.fromarray(scene["label"]).save(os.path.join(tmp, split, "labels", stem + ".png"))
        records.append({"image": f"images/{stem}.png", "label": f"labels/{stem}.png", "caption": scene["caption"],
                        "objects": scene["objects"], "stuff": scene["stuff"], "stuff_boxes": scene["stuff_boxes"]})
    with open(os.path.join(tmp, split, "annotations.jsonl"), "w") as f:
        for r in records:
            f.write(json.dumps(r, sort_keys=True) + "\n")


def generate(root: Optional[str] = None, sizes: Optional[Dict[str, int]] = None, progress: bool = True) -> str:
    """Write ToyWorld to ``root`` (default: the cache) unless it is there already; returns root.

    Written to a temporary sibling folder and renamed at the end, so an interrupted run leaves
    nothing half-made and concurrent processes do not collide."""
    root = root or default_root()
    sizes = dict(sizes or DEFAULT_SIZES)
    unknown = set(sizes) - set(SPLITS)
    if unknown:
        raise ValueError(f"Unknown ToyWorld splits {sorted(unknown)}; known: {sorted(SPLITS)}")
    if is_generated(root):
        verify_generated(root)
        return root
    tmp = f"{root}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    args = ([tmp] * len(sizes), list(sizes), list(sizes.values()), [progress] * len(sizes))
    workers = min(len(sizes), os.cpu_count() or 1)
    if workers > 1:  # the splits in parallel: every image has its own RNG, so the files are the same
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_write_split, *args))
    else:
        list(map(_write_split, *args))
    meta = {"version": GENERATOR_VERSION, "seed": SEED, "image_size": IMAGE_SIZE, "sizes": sizes,
            "vocabularies": {s: list(spec.vocabulary) for s, spec in SPLITS.items()},
            "val_unseen": list(VAL_UNSEEN), "wide_unseen": list(WIDE_UNSEEN)}
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
