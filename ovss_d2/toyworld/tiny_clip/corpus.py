"""The tiny CLIP's training corpus: ToyWorld's ``captions`` split as image items (object crops,
stuff windows, captioned windows and scenes, dense regions and cells) and the texts that describe
them, with what each text requires of an item (:class:`Content`), so that a text is a positive of
every item it describes. See :mod:`ovss_d2.toyworld.tiny_clip` for the mix of a training step."""
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import roi_align

from ..generator import article, caption, read_annotations, stuff_phrase
from ..vocabulary import HELD_OUT, is_object, object_class, split_name
from ...modeling.meta_arch.base import normalize_images

# Seen pairs held out (besides the test ones) when choosing the hyper-parameters.
DEV_HELD_OUT: Tuple[str, ...] = tuple(object_class(c, p) for c, p in (
    ("red", "plain"), ("orange", "zigzag"), ("yellow", "striped"), ("green", "checkered"), ("blue", "dotted"),
    ("purple", "plain"))) + ("yellow wall",)
CORPUS_SPLIT = "captions"


# ---- what a crop shows and what a text says --------------------------------------------------
@dataclass(frozen=True)
class Content:
    """What an image item shows, or what a text requires (empty fields: "any").

    ``kind`` "object" (``a`` colour, ``b`` pattern, ``o`` outline), "stuff" (``a`` colour of a
    wall or "", ``b`` "wall" or the natural stuff's name), "caption" (``a`` the caption: describes
    only itself) or, for texts only, "colour" (``a``: any object or wall of that colour)."""
    kind: str
    a: str = ""
    b: str = ""
    o: str = ""


def describes(text: Content, item: Content) -> bool:
    """Whether a text describes an item."""
    if text.kind == "colour":
        return item.kind in ("object", "stuff") and item.a == text.a
    if text.kind != item.kind:
        return False
    if text.kind == "caption":
        return text.a == item.a
    return all(not t or t == i for t, i in ((text.a, item.a), (text.b, item.b), (text.o, item.o)))


def class_content(name: str, outline: str = "") -> Content:
    colour, kind = split_name(name)
    return Content("object", colour, kind, outline) if is_object(name) else Content("stuff", colour, kind)


_FULL = ("a photo of a {n}.", "a photo of a {n}.", "{art} {n}.", "a photo of the {n}.", "there is {art} {n}.")
_OBJECT_TEXTS = {  # form -> (templates, which of colour / pattern / outline the text requires)
    "full": (_FULL + ("{art} {c} {p} shape.", "a shape that is {c} and {p}.", "{art2} {p} {c} shape."), "cp"),
    "outline": (("{art} {c} {p} {o}.", "a photo of {art} {c} {p} {o}.", "a {o} that is {c} and {p}."), "cpo"),
    "colour": (("{art} {c} shape.", "a photo of {art} {c} shape."), "c"),
    "pattern": (("{art2} {p} shape.", "a photo of {art2} {p} shape.", "something {p}."), "p"),
}
_COLOUR_TEXTS = ("something {c}.", "a photo of something {c}.", "it is {c}.")


def object_text(colour: str, pattern: str, outline: str, rng) -> Tuple[str, Content]:
    """A text describing an object of this class drawn with this outline, and what it requires."""
    form = str(rng.choice(["full"] * 3 + ["outline", "colour", "pattern", "any colour"]))
    if form == "any colour":
        return str(rng.choice(_COLOUR_TEXTS)).format(c=colour), Content("colour", colour)
    templates, needs = _OBJECT_TEXTS[form]
    text = str(rng.choice(templates)).format(n=f"{colour} {pattern} shape", c=colour, p=pattern, o=outline,
                                             art=article(colour), art2=article(pattern))
    return text, Content("object", colour if "c" in needs else "", pattern if "p" in needs else "",
                         outline if "o" in needs else "")


def stuff_text(name: str, rng) -> Tuple[str, Content]:
    content = class_content(name)
    if content.b == "wall":
        u = rng.random()
        if u < 0.15:
            return str(rng.choice(["a wall.", "a photo of a wall.", "a brick wall."])), Content("stuff", "", "wall")
        if u < 0.3:
            return str(rng.choice(_COLOUR_TEXTS)).format(c=content.a), Content("colour", content.a)
    return str(rng.choice(_FULL)).format(n=name, art=article(name)), content


# ---- items ------------------------------------------------------------------------------------------
def load_split(root: str, split: str) -> Tuple[torch.Tensor, List[Dict]]:
    """(N, 3, H, W) uint8 images and the annotation records of a ToyWorld split."""
    records = read_annotations(root, split)
    images = np.stack([np.asarray(Image.open(os.path.join(root, split, r["image"]))) for r in records])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), records


def crop_items(records: List[Dict], margin: int = 3) -> List[Tuple[int, List[float], str, str]]:
    """(image index, box, class name, outline or "stuff") of every object and stuff window."""
    items = []
    for i, r in enumerate(records):
        for o in r["objects"]:
            x0, y0, x1, y1 = o["box"]
            items.append((i, [x0 - margin, y0 - margin, x1 + margin, y1 + margin], o["name"], o["outline"]))
        for s in r["stuff_boxes"]:
            items.append((i, [float(v) for v in s["box"]], s["name"], "stuff"))
    return items


def label_map(root: str, split: str, record: Dict) -> np.ndarray:
    return np.asarray(Image.open(os.path.join(root, split, record["label"])))


def cell_majority(label: np.ndarray, num_classes: int, grid: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """The class covering most of each cell of a ``grid`` over an (H, W) label map (255: ignored)
    and the fraction of the cell it covers: (h, w) fractions, (h, w) class ids."""
    label = torch.from_numpy(label.astype(np.int64))
    onehot = F.one_hot(label.clamp(max=num_classes - 1), num_classes).permute(2, 0, 1).float()
    return F.adaptive_avg_pool2d(onehot * (label != 255), grid).max(0)


def cell_caption(label: np.ndarray, box: Sequence[int], vocabulary: Sequence[str], outlines: Dict[str, str],
                 rng) -> Optional[str]:
    """A caption of what a window [x0, y0, x1, y1] of a label map holds: the objects (``outlines``:
    class -> outline) with at least half of their pixels inside and 3 % of the window, and the
    stuff covering 10 % of it."""
    x0, y0, x1, y1 = box
    window = label[y0:y1, x0:x1]
    ids, counts = np.unique(window, return_counts=True)
    whole = dict(zip(*np.unique(label, return_counts=True)))
    objects, stuff = [], []
    for i, c in zip(ids.tolist(), counts.tolist()):
        name = vocabulary[i]
        if is_object(name):
            if c >= 0.5 * whole[i] and c >= 0.03 * window.size:
                objects.append((name, outlines[name]))
        elif c >= 0.1 * window.size:
            stuff.append(name)
    if not stuff:
        return None
    order = rng.permutation(len(objects))
    return caption([objects[k] for k in order], sorted(stuff, key=lambda s: stuff_phrase(s)), rng)


class Normalizer:
    """0..255 RGB images -> the inputs of an open_clip model (its own mean and std)."""

    def __init__(self, model):
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        mean = cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))
        std = cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return normalize_images(x, self.mean, self.std)


def crops(images: torch.Tensor, index: List[int], boxes: List[List[float]], size: int) -> torch.Tensor:
    """(K, 3, size, size) float crops (bilinear, 0..255) of boxes [x0, y0, x1, y1]."""
    rois = torch.tensor([[float(i)] + list(map(float, b)) for i, b in zip(index, boxes)])
    sub, inverse = torch.unique(rois[:, 0].long(), return_inverse=True)
    rois[:, 0] = inverse.float()
    return roi_align(images[sub].float(), rois, output_size=size, aligned=True, sampling_ratio=2)


def held_out(holdout: str) -> Tuple[str, ...]:
    """Classes removed from the corpus: the test pairs, plus the development pairs for "dev"."""
    if holdout not in ("test", "dev"):
        raise ValueError(f"holdout must be 'test' or 'dev', got {holdout!r}")
    return HELD_OUT + (DEV_HELD_OUT if holdout == "dev" else ())


class Batches:
    """Draws training batches of (image index, box, text, Content) from the corpus."""

    def __init__(self, root: str, split: str, excluded: Sequence[str], rng):
        self.rng = rng
        self.images, records = load_split(root, split)
        self.vocabulary = json.load(open(os.path.join(root, "meta.json")))["vocabularies"][split]
        excluded = set(excluded)
        self.records = [(i, r) for i, r in enumerate(records)
                        if not ({o["name"] for o in r["objects"]} | set(r["stuff"])) & excluded]
        self.labels = {i: label_map(root, split, r) for i, r in self.records}
        self._majority: Dict[int, Tuple[torch.Tensor, torch.Tensor]] = {}  # grid -> (N, g, g) fractions, classes
        items = crop_items([r for _, r in self.records])
        index = [i for i, _ in self.records]
        self.objects = [(index[k], b, n, kind) for k, b, n, kind in items if kind != "stuff"]
        self.stuff = [(index[k], b, n) for k, b, n, kind in items if kind == "stuff"]
        self.size = self.images.shape[-1]

    def draw(self, n_obj: int, n_stuff: int, n_cell: int, n_scene: int):
        """Image items: (image index, box, text, Content shown, Content the text requires)."""
        rng, out = self.rng, []
        for i, box, name, outline in (self.objects[j] for j in rng.integers(0, len(self.objects), n_obj)):
            text, req = object_text(*split_name(name), outline, rng)
            box = list(np.array(box) + rng.uniform(-3, 3, 4))
            out.append((i, box, text, class_content(name, outline), req))
        for i, box, name in (self.stuff[j] for j in rng.integers(0, len(self.stuff), n_stuff)):
            text, req = stuff_text(name, rng)
            out.append((i, list(np.array(box) + rng.uniform(-2, 2, 4)), text, class_content(name), req))
        while n_cell > 0:
            i, r = self.records[int(rng.integers(0, len(self.records)))]
            win = int(rng.integers(self.size // 4, 3 * self.size // 4 + 1))
            x0, y0 = (int(v) for v in rng.integers(0, self.size - win + 1, 2))
            text = cell_caption(self.labels[i], (x0, y0, x0 + win, y0 + win), self.vocabulary,
                                {o["name"]: o["outline"] for o in r["objects"]}, rng)
            if text is None:
                continue
            out.append((i, [x0, y0, x0 + win, y0 + win], text, Content("caption", text), Content("caption", text)))
            n_cell -= 1
        for k in rng.integers(0, len(self.records), n_scene):
            i, r = self.records[int(k)]
            out.append((i, [0, 0, self.size, self.size], r["caption"], Content("caption", r["caption"]),
                        Content("caption", r["caption"])))
        return out

    def cell_majorities(self, grid: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """:func:`cell_majority` of every scene's label map (indexed by image index) on a ``grid`` x
        ``grid`` grid, computed once: (N, grid, grid) fractions and class ids. Two whole tensors, not
        one pair per scene drawn, which would leave small blocks among the training step's large
        temporaries and fragment the heap."""
        if grid not in self._majority:
            n = len(self.images)
            best, cls = torch.zeros(n, grid, grid), torch.zeros(n, grid, grid, dtype=torch.long)
            for i in self.labels:
                best[i], cls[i] = cell_majority(self.labels[i], len(self.vocabulary), (grid, grid))
            self._majority[grid] = best, cls
        return self._majority[grid]

    def draw_regions(self, n_scenes: int, grid: int = 0, cells_per_scene: int = 0, min_fraction: float = 0.6):
        """Scenes for region-text pairs: (scene image indices, region items (scene position, box or
        (row, col) of a ``grid`` x ``grid`` cell, text, Content, requirement)): every object box
        and stuff window, and up to ``cells_per_scene`` grid cells that one class covers at
        ``min_fraction``, described by that class."""
        rng = self.rng
        picks = [self.records[int(k)] for k in rng.integers(0, len(self.records), n_scenes)]
        regions, cells = [], []
        for pos, (i, r) in enumerate(picks):
            outlines = {o["name"]: o["outline"] for o in r["objects"]}
            for o in r["objects"]:
                text, req = object_text(*split_name(o["name"]), o["outline"], rng)
                regions.append((pos, o["box"], text, class_content(o["name"], o["outline"]), req))
            for sb in r["stuff_boxes"]:
                text, req = stuff_text(sb["name"], rng)
                regions.append((pos, sb["box"], text, class_content(sb["name"]), req))
            if not cells_per_scene:
                continue
            best, cls = (m[i] for m in self.cell_majorities(grid))
            ys, xs = torch.nonzero(best >= min_fraction, as_tuple=True)
            for k in rng.permutation(len(ys))[:cells_per_scene]:
                name = self.vocabulary[int(cls[ys[k], xs[k]])]
                if is_object(name):
                    text, req = object_text(*split_name(name), outlines[name], rng)
                    content = class_content(name, outlines[name])
                else:
                    text, req = stuff_text(name, rng)
                    content = class_content(name)
                cells.append((pos, (int(ys[k]), int(xs[k])), text, content, req))
        return [i for i, _ in picks], regions, cells


def describes_matrix(texts: Sequence[Content], items: Sequence[Content]) -> torch.Tensor:
    """(len(items), len(texts)) float 0/1: ``describes(text, item)``, evaluated once per distinct
    pair of contents (a batch repeats the same classes many times)."""
    text_ids = {c: k for k, c in enumerate(dict.fromkeys(texts))}
    item_ids = {c: k for k, c in enumerate(dict.fromkeys(items))}
    table = torch.tensor([[describes(t, i) for t in text_ids] for i in item_ids], dtype=torch.float32)
    return table[[item_ids[c] for c in items]][:, [text_ids[c] for c in texts]]

