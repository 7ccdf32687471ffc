"""Contrastive training of a tiny open_clip CLIP on ToyWorld's caption corpus, and its zero-shot
evaluation.

The corpus (``captions`` split) shows the whole ToyWorld except the held-out pairs. Each step
mixes, all drawn from that split:

* object crops at 64 px, described by their full name in varied words ("a photo of a red striped
  shape.", "a shape that is red and striped."), with their outline ("a red striped star."), by
  their colour alone ("a red shape.", "something red.") or by their pattern alone ("a striped
  shape.");
* stuff windows ("a photo of a grass.", "a yellow wall.", "a wall.");
* whole scenes with their captions, and random windows of scenes with a caption of what they hold;
* dense items (``region_scenes`` > 0): scenes at ``region_size`` through the trunk, each object box
  and stuff window RoI-pooled from the stride-32 map, and single stride-32 cells that one class
  covers, each against a text of its class, so that the dense features localise.

A text is a positive of every image it describes: "a red shape." of every red object in the
batch, "a striped shape." of every striped one. The loss is a multi-positive InfoNCE in both
directions. Being asked to match an object to its colour and its pattern separately is what makes
the embedding of an unseen pair ("green plain shape") land where both of its words point.

Hyper-parameters were chosen on held-out *development* pairs (``DEV_HELD_OUT``, removed from the
corpus with ``holdout="dev"``), never on the unseen test classes.

The result is an ordinary open_clip training checkpoint (``{"epoch", "name", "state_dict"}``)
that every method loads through ``MODEL.CLIP.NAME`` / ``MODEL.CLIP.PRETRAINED``.
"""
import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import roi_align
from tqdm import tqdm

from .generator import GENERATOR_VERSION, article, caption, default_root, generate, read_annotations, stuff_phrase
from .vocabulary import (HELD_OUT, TRAIN_CLASSES, VAL_CLASSES, VAL_UNSEEN, WIDE_CLASSES, WIDE_UNSEEN, is_object,
                         object_class, split_name)

logger = logging.getLogger(__name__)

TRAIN_SETTINGS = {"steps": 600, "batch_size": 96, "lr": 2e-3, "weight_decay": 0.05, "input_size": 64,
                  "seed": 0, "warmup": 50, "holdout": "test", "region_scenes": 12, "region_size": 256,
                  "cells_per_scene": 12, "channels_last": True}
# Seen pairs held out (besides the test ones) when choosing the hyper-parameters.
DEV_HELD_OUT: Tuple[str, ...] = tuple(object_class(c, p) for c, p in (
    ("red", "plain"), ("orange", "zigzag"), ("yellow", "striped"), ("green", "checkered"), ("blue", "dotted"),
    ("purple", "plain"))) + ("yellow wall",)
PROMPT = "a photo of a {}."  # the toy configs' template ("photo_of_a")
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


def _label_map(root: str, split: str, record: Dict) -> np.ndarray:
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


class _Normalizer:
    def __init__(self, model):
        cfg = getattr(model.visual, "preprocess_cfg", None) or {}
        mean = cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))
        std = cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
        self.mean = torch.tensor(mean).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(std).view(1, 3, 1, 1) * 255

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def crops(images: torch.Tensor, index: List[int], boxes: List[List[float]], size: int) -> torch.Tensor:
    """(K, 3, size, size) float crops (bilinear, 0..255) of boxes [x0, y0, x1, y1]."""
    rois = torch.tensor([[float(i)] + list(map(float, b)) for i, b in zip(index, boxes)])
    sub, inverse = torch.unique(rois[:, 0].long(), return_inverse=True)
    rois[:, 0] = inverse.float()
    return roi_align(images[sub].float(), rois, output_size=size, aligned=True, sampling_ratio=2)


def settings_key(model_name: str, settings: Dict) -> str:
    payload = json.dumps({"model": model_name, "generator": GENERATOR_VERSION, **settings}, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:10]


def default_checkpoint_path(model_name: str, settings: Optional[Dict] = None) -> str:
    settings = {**TRAIN_SETTINGS, **(settings or {})}
    cache = os.environ.get("OVSS_D2_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ovss_d2"))
    return os.path.join(cache, "tiny_clip", f"{model_name}-toyworld-{settings_key(model_name, settings)}.pt")


def held_out(holdout: str) -> Tuple[str, ...]:
    """Classes removed from the corpus: the test pairs, plus the development pairs for "dev"."""
    if holdout not in ("test", "dev"):
        raise ValueError(f"holdout must be 'test' or 'dev', got {holdout!r}")
    return HELD_OUT + (DEV_HELD_OUT if holdout == "dev" else ())


class _Batches:
    """Draws training batches of (image index, box, text, Content) from the corpus."""

    def __init__(self, root: str, split: str, excluded: Sequence[str], rng):
        self.rng = rng
        self.images, records = load_split(root, split)
        self.vocabulary = json.load(open(os.path.join(root, "meta.json")))["vocabularies"][split]
        excluded = set(excluded)
        self.records = [(i, r) for i, r in enumerate(records)
                        if not ({o["name"] for o in r["objects"]} | set(r["stuff"])) & excluded]
        self.labels = {i: _label_map(root, split, r) for i, r in self.records}
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


def _multi_positive_nce(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where ``pos`` (B, U) marks every text that describes each image."""
    loss_i = -(pos * logits.log_softmax(dim=1)).sum(1).div(pos.sum(1)).mean()
    loss_t = -(pos.T * logits.T.log_softmax(dim=1)).sum(1).div(pos.T.sum(1)).mean()
    return (loss_i + loss_t) / 2


def train_tiny_clip(model_name: str = "ovss-tiny-convnext", root: Optional[str] = None,
                    out_path: Optional[str] = None, progress: bool = True, **overrides) -> str:
    """Train a tiny CLIP on ToyWorld's caption corpus; returns the checkpoint path (reused when a
    checkpoint of the same model, generator and settings exists)."""
    from ...modeling.clip import CLIPWrapper

    settings = {**TRAIN_SETTINGS, **overrides}
    out_path = out_path or default_checkpoint_path(model_name, settings)
    if os.path.isfile(out_path):
        return out_path
    root = generate(root or default_root(), progress=progress)
    torch.manual_seed(settings["seed"])
    rng = np.random.default_rng(settings["seed"])
    clip = CLIPWrapper(model_name, "none")
    model = clip.model
    if settings.get("channels_last"):  # NHWC convolutions, as the toy configs (MODEL.CHANNELS_LAST)
        model.to(memory_format=torch.channels_last)
    norm = _Normalizer(model)
    data = _Batches(root, CORPUS_SPLIT, held_out(settings["holdout"]), rng)
    opt = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    steps, bs, size = settings["steps"], settings["batch_size"], settings["input_size"]
    n_obj, n_stuff, n_cell = (int(bs * f) for f in settings.get("mix", (0.45, 0.2, 0.2)))
    n_region_scenes = settings.get("region_scenes", 0)
    token_cache: Dict[str, torch.Tensor] = {}
    model.train()
    start = time.time()
    bar = tqdm(range(steps), desc=f"tiny CLIP ({model_name})", disable=not progress, unit="step")
    for step in bar:
        lr = settings["lr"] * min(1.0, (step + 1) / settings["warmup"]) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        batch = data.draw(n_obj, n_stuff, n_cell, bs - n_obj - n_stuff - n_cell)
        x = crops(data.images, [b[0] for b in batch], [b[1] for b in batch], size)
        flip = torch.from_numpy(rng.random(len(x)) < 0.5)
        x[flip] = x[flip].flip(-1)
        x = x * torch.from_numpy(rng.uniform(0.85, 1.15, (len(x), 1, 1, 1))).float()  # brightness only
        img_emb = model.encode_image(norm(x.clamp(0, 255)))
        if n_region_scenes:
            region_size = settings.get("region_size", data.size)
            grid = region_size // clip.strides[-1]
            scene_ids, regions, cells = data.draw_regions(n_region_scenes, grid, settings.get("cells_per_scene", 0))
            scenes = data.images[scene_ids].float()
            if region_size != data.size:
                scenes = F.interpolate(scenes, size=(region_size, region_size), mode="bilinear", align_corners=False)
            res5 = clip.forward_features(norm(scenes))["res5"]
            rois = torch.tensor([[float(r[0])] + [float(v) for v in r[1]] for r in regions])
            pooled = roi_align(res5, rois, output_size=1, spatial_scale=region_size / data.size / clip.strides[-1],
                               aligned=True, sampling_ratio=2)
            img_emb = torch.cat([img_emb, clip.dense_embedding({"res5": pooled}).flatten(1)])
            batch = batch + regions
            if cells:
                dense = clip.dense_embedding({"res5": res5})  # (S, D, grid, grid)
                index = torch.tensor([[c[0], c[1][0], c[1][1]] for c in cells])
                img_emb = torch.cat([img_emb, dense[index[:, 0], :, index[:, 1], index[:, 2]]])
                batch = batch + cells
        texts = list(dict.fromkeys(b[2] for b in batch))
        requirement = {b[2]: b[4] for b in batch}
        for t in texts:
            if t not in token_cache:
                token_cache[t] = clip.tokenize([t])[0]
        pos = describes_matrix([requirement[t] for t in texts], [b[3] for b in batch])  # (B, U)
        txt_emb = F.normalize(model.encode_text(torch.stack([token_cache[t] for t in texts])), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * F.normalize(img_emb, dim=-1) @ txt_emb.T  # (B, U)
        loss = _multi_positive_nce(logits, pos)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    logger.info(f"tiny CLIP trained in {time.time() - start:.0f}s")
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    tmp = out_path + ".tmp"
    torch.save({"epoch": steps, "name": model_name, "settings": settings,
                "state_dict": model.state_dict()}, tmp)
    os.replace(tmp, out_path)
    return out_path


# ---- zero-shot evaluation ---------------------------------------------------------------------
EVAL_SETS = {"val": (VAL_CLASSES, VAL_UNSEEN), "wide_val": (WIDE_CLASSES, WIDE_UNSEEN)}


def _groups(names: Sequence[str], unseen: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Masks of the items per group. With the development pairs as ``unseen``, the test pairs
    (never trained either) belong to no group."""
    obj = torch.tensor([is_object(n) for n in names])
    new = torch.tensor([n in unseen for n in names])
    seen = ~new & torch.tensor([n not in HELD_OUT or n in unseen for n in names])
    return {"seen_objects": obj & seen, "unseen_objects": obj & new, "seen_stuff": ~obj & seen,
            "unseen_stuff": ~obj & new, "stuff": ~obj & (seen | new)}


@torch.no_grad()
def text_embeddings(model, tokenizer, classes: Sequence[str], prompt: str = PROMPT) -> torch.Tensor:
    return F.normalize(model.encode_text(tokenizer([prompt.format(c) for c in classes])), dim=-1)


@torch.no_grad()
def zero_shot_crop_accuracy(model, tokenizer, root: Optional[str] = None, split: str = "val",
                            size: int = 64, batch: int = 256, unseen: Optional[Sequence[str]] = None
                            ) -> Dict[str, float]:
    """Top-1 accuracy (%) of the object crops and stuff windows of an evaluation split against the
    prompts of every class of its vocabulary: seen / unseen objects, seen / unseen stuff, all
    stuff, with counts and chance. ``unseen`` overrides the split's unseen classes (e.g. the
    development pairs)."""
    root = generate(root or default_root(), progress=False)
    classes, split_unseen = EVAL_SETS[split]
    unseen = split_unseen if unseen is None else unseen
    model.eval()
    norm = _Normalizer(model)
    images, records = load_split(root, split)
    items = crop_items(records)
    text = text_embeddings(model, tokenizer, classes)
    preds = []
    for s in range(0, len(items), batch):
        part = items[s:s + batch]
        x = crops(images, [p[0] for p in part], [p[1] for p in part], size)
        preds.append((F.normalize(model.encode_image(norm(x)), dim=-1) @ text.T).argmax(1))
    preds = torch.cat(preds)
    names = [p[2] for p in items]
    correct = (preds == torch.tensor([classes.index(n) for n in names])).float()
    res = {"chance": 100.0 / len(classes)}
    for k, m in _groups(names, unseen).items():
        res[k] = 100.0 * correct[m].mean().item() if m.any() else float("nan")
        res[f"n_{k}"] = int(m.sum())
    return res


@torch.no_grad()
def dense_cell_accuracy(model, tokenizer, root: Optional[str] = None, split: str = "val", input_size: int = 256,
                        min_fraction: float = 0.5, unseen: Optional[Sequence[str]] = None,
                        model_name: str = "ovss-tiny-convnext") -> Dict[str, float]:
    """How well the dense features localise: each scene at ``input_size`` through the ConvNeXt
    trunk, every stride-32 cell's embedding (the CLIP head on that pixel) classified against the
    vocabulary's prompts; top-1 accuracy (%) over the cells that are at least ``min_fraction``
    one class, in the same groups as :func:`zero_shot_crop_accuracy`."""
    from ...modeling.clip import CLIPWrapper

    root = generate(root or default_root(), progress=False)
    classes, split_unseen = EVAL_SETS[split]
    unseen = split_unseen if unseen is None else unseen
    wrapper = CLIPWrapper(model_name, "none")
    wrapper.model.load_state_dict(model.state_dict())
    wrapper.eval()
    norm = _Normalizer(model)
    images, records = load_split(root, split)
    text = text_embeddings(model, tokenizer, classes)
    names, correct = [], []
    for s in range(0, len(records), 64):
        x = images[s:s + 64].float()
        if x.shape[-1] != input_size:
            x = F.interpolate(x, size=(input_size, input_size), mode="bilinear", align_corners=False)
        dense = F.normalize(wrapper.dense_embedding(wrapper.forward_features(norm(x))), dim=1)  # (B, D, h, w)
        pred = torch.einsum("bdhw,nd->bnhw", dense, text).argmax(1)  # (B, h, w)
        h, w = pred.shape[-2:]
        for k in range(len(x)):
            best, cls = cell_majority(_label_map(root, split, records[s + k]), len(classes), (h, w))
            keep = best >= min_fraction
            names += [classes[c] for c in cls[keep].tolist()]
            correct.append((pred[k][keep] == cls[keep]).float())
    correct = torch.cat(correct)
    res = {"chance": 100.0 / len(classes)}
    for k, m in _groups(names, unseen).items():
        res[k] = 100.0 * correct[m].mean().item() if m.any() else float("nan")
        res[f"n_{k}"] = int(m.sum())
    return res


def load_tiny_clip(path: str):
    """The open_clip model and tokenizer of a tiny-CLIP checkpoint."""
    import open_clip

    from ...checkpoint import load_checkpoint_file
    from ...modeling.clip import CLIPWrapper

    ckpt = load_checkpoint_file(path)  # data only: tensors, the model name and the settings
    model = CLIPWrapper(ckpt["name"], "none").model  # registers the tiny models, built without the random-init log
    model.load_state_dict(ckpt["state_dict"])
    return model, open_clip.get_tokenizer(ckpt["name"])


def selection_report(path: str, root: Optional[str] = None) -> Dict[str, Dict[str, float]]:
    """Crop and cell accuracies of a checkpoint on both evaluation sets (test unseen classes)."""
    model, tokenizer = load_tiny_clip(path)
    return {f"{kind}_{split}": fn(model, tokenizer, root=root, split=split)
            for split in EVAL_SETS for kind, fn in (("crops", zero_shot_crop_accuracy), ("cells", dense_cell_accuracy))}


__all__ = ["TRAIN_SETTINGS", "DEV_HELD_OUT", "train_tiny_clip", "zero_shot_crop_accuracy", "dense_cell_accuracy",
           "load_tiny_clip", "default_checkpoint_path", "held_out", "TRAIN_CLASSES"]
