"""Contrastive training of a tiny open_clip CLIP on ToyWorld, and its zero-shot evaluation.

Training pairs are drawn from the training split only (seen classes): whole scenes with their
captions, single-object crops with "a photo of a <object>." and stuff windows with
"a photo of <stuff>.". Captions repeat across a batch, so the loss is contrastive with multiple
positives: an image's positives are all batch texts equal to its own caption.

The result is an ordinary open_clip training checkpoint (``{"epoch", "name", "state_dict"}``)
that every method loads through ``MODEL.CLIP.NAME`` / ``MODEL.CLIP.PRETRAINED``.
"""
import hashlib
import json
import logging
import math
import os
import time
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import roi_align
from tqdm import tqdm

from .generator import default_root, generate, read_annotations
from .vocabulary import ALL_CLASSES, OBJECTS, STUFF, UNSEEN_CLASSES

logger = logging.getLogger(__name__)

TRAIN_SETTINGS = {"steps": 1000, "batch_size": 128, "lr": 2e-3, "weight_decay": 0.05, "input_size": 64,
                  "seed": 0, "warmup": 50}
PROMPT = "a photo of a {}."


def _object_text(name: str) -> str:
    return PROMPT.format(name)


def _stuff_text(name: str) -> str:
    return f"a photo of {name}."


def load_split(root: str, split: str) -> Tuple[torch.Tensor, List[Dict]]:
    """(N, 3, H, W) uint8 images and the annotation records of a ToyWorld split."""
    records = read_annotations(root, split)
    images = np.stack([np.asarray(Image.open(os.path.join(root, split, r["image"]))) for r in records])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), records


def crop_items(records: List[Dict], margin: int = 3) -> List[Tuple[int, List[float], str, str]]:
    """(image index, box, class name, kind) of every object and stuff window."""
    items = []
    for i, r in enumerate(records):
        for o in r["objects"]:
            x0, y0, x1, y1 = o["box"]
            items.append((i, [x0 - margin, y0 - margin, x1 + margin, y1 + margin], o["name"], "object"))
        for s in r["stuff_boxes"]:
            items.append((i, [float(v) for v in s["box"]], s["name"], "stuff"))
    return items


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
    from .generator import GENERATOR_VERSION

    payload = json.dumps({"model": model_name, "generator": GENERATOR_VERSION, **settings}, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:10]


def default_checkpoint_path(model_name: str, settings: Optional[Dict] = None) -> str:
    settings = {**TRAIN_SETTINGS, **(settings or {})}
    cache = os.environ.get("OVSS_D2_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "ovss_d2"))
    return os.path.join(cache, "tiny_clip", f"{model_name}-toyworld-{settings_key(model_name, settings)}.pt")


def train_tiny_clip(model_name: str = "ovss-tiny-convnext", root: Optional[str] = None,
                    out_path: Optional[str] = None, progress: bool = True, **overrides) -> str:
    """Train a tiny CLIP on ToyWorld's training split; returns the checkpoint path (reused when a
    checkpoint of the same model, generator and settings exists)."""
    import open_clip

    from ...modeling.clip import tiny_models  # noqa: F401  (registers the timm trunk)

    settings = {**TRAIN_SETTINGS, **overrides}
    out_path = out_path or default_checkpoint_path(model_name, settings)
    if os.path.isfile(out_path):
        return out_path
    root = generate(root or default_root(), progress=progress)
    torch.manual_seed(settings["seed"])
    rng = np.random.default_rng(settings["seed"])
    model = open_clip.create_model(model_name)
    tokenizer = open_clip.get_tokenizer(model_name)
    norm = _Normalizer(model)
    images, records = load_split(root, "train")
    items = crop_items(records)
    objects = [it for it in items if it[3] == "object"]
    stuff = [it for it in items if it[3] == "stuff"]
    h, w = images.shape[-2:]
    opt = torch.optim.AdamW(model.parameters(), lr=settings["lr"], weight_decay=settings["weight_decay"])
    steps, bs, size = settings["steps"], settings["batch_size"], settings["input_size"]
    n_obj, n_stuff = int(bs * 0.45), int(bs * 0.2)
    n_scene = bs - n_obj - n_stuff
    token_cache: Dict[str, torch.Tensor] = {}
    model.train()
    start = time.time()
    bar = tqdm(range(steps), desc=f"tiny CLIP ({model_name})", disable=not progress, unit="step")
    for step in bar:
        lr = settings["lr"] * min(1.0, (step + 1) / settings["warmup"]) * 0.5 * (1 + math.cos(math.pi * step / steps))
        for g in opt.param_groups:
            g["lr"] = lr
        scene_ids = rng.integers(0, len(records), n_scene)
        picks = [objects[j] for j in rng.integers(0, len(objects), n_obj)] + \
                [stuff[j] for j in rng.integers(0, len(stuff), n_stuff)]
        jitter = rng.uniform(-2, 2, (len(picks), 4))
        index = [int(i) for i in scene_ids] + [p[0] for p in picks]
        boxes = [[0.0, 0.0, float(w), float(h)]] * n_scene + \
                [list(np.array(p[1]) + j) for p, j in zip(picks, jitter)]
        texts = [records[i]["caption"] for i in scene_ids] + \
                [_object_text(p[2]) if p[3] == "object" else _stuff_text(p[2]) for p in picks]
        x = crops(images, index, boxes, size)
        flip = torch.from_numpy(rng.random(len(x)) < 0.5)
        x[flip] = x[flip].flip(-1)
        unique = sorted(set(texts))
        for t in unique:
            if t not in token_cache:
                token_cache[t] = tokenizer([t])[0]
        text_id = torch.tensor([unique.index(t) for t in texts])
        img_emb = F.normalize(model.encode_image(norm(x)), dim=-1)
        txt_emb = F.normalize(model.encode_text(torch.stack([token_cache[t] for t in unique])), dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * img_emb @ txt_emb.T  # (B, U)
        loss_i = F.cross_entropy(logits, text_id)
        pos = (text_id[None, :] == torch.arange(len(unique))[:, None]).float()  # (U, B)
        loss_t = -(pos * logits.T.log_softmax(dim=1)).sum(1).div(pos.sum(1)).mean()
        loss = (loss_i + loss_t) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    logger.info(f"tiny CLIP trained in {time.time() - start:.0f}s")
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    tmp = out_path + ".tmp"
    torch.save({"epoch": steps, "name": model_name, "settings": settings,
                "state_dict": model.state_dict()}, tmp)
    os.replace(tmp, out_path)
    return out_path


@torch.no_grad()
def zero_shot_crop_accuracy(model, tokenizer, root: Optional[str] = None, split: str = "val",
                            size: int = 64, batch: int = 256) -> Dict[str, float]:
    """Top-1 accuracy (%) of object and stuff crops against the prompts of all ToyWorld classes.

    Returns accuracy for seen objects, unseen objects and stuff, their counts, and chance."""
    root = generate(root or default_root(), progress=False)
    model.eval()
    norm = _Normalizer(model)
    images, records = load_split(root, split)
    items = crop_items(records)
    prompts = [_stuff_text(c) if c in STUFF else _object_text(c) for c in ALL_CLASSES]
    text = F.normalize(model.encode_text(tokenizer(prompts)), dim=-1)
    preds = []
    for s in range(0, len(items), batch):
        part = items[s:s + batch]
        x = crops(images, [p[0] for p in part], [p[1] for p in part], size)
        preds.append((F.normalize(model.encode_image(norm(x)), dim=-1) @ text.T).argmax(1))
    preds = torch.cat(preds)
    target = torch.tensor([ALL_CLASSES.index(p[2]) for p in items])
    correct = (preds == target).float()
    groups = {
        "seen_objects": torch.tensor([p[2] in OBJECTS and p[2] not in UNSEEN_CLASSES for p in items]),
        "unseen_objects": torch.tensor([p[2] in UNSEEN_CLASSES for p in items]),
        "stuff": torch.tensor([p[2] in STUFF for p in items]),
    }
    res = {"chance": 100.0 / len(ALL_CLASSES)}
    for k, m in groups.items():
        res[k] = 100.0 * correct[m].mean().item() if m.any() else float("nan")
        res[f"n_{k}"] = int(m.sum())
    return res


def load_tiny_clip(path: str):
    """The open_clip model and tokenizer of a tiny-CLIP checkpoint."""
    import open_clip

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    model = open_clip.create_model(ckpt["name"])
    model.load_state_dict(ckpt["state_dict"])
    return model, open_clip.get_tokenizer(ckpt["name"])
