"""Contrastive training of a tiny open_clip CLIP on ToyWorld's caption corpus (:mod:`.corpus`),
and where its checkpoint is cached (the file name carries the training settings)."""
import hashlib
import json
import logging
import math
import os
import time
from typing import Dict, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from tqdm import tqdm

from ...modeling.clip import CLIPWrapper
from ...paths import TINY_CLIP, cache_path
from ..generator import GENERATOR_VERSION, default_root, generate
from .corpus import CORPUS_SPLIT, Batches, Normalizer, crops, describes_matrix, held_out

logger = logging.getLogger(__name__)

TRAIN_SETTINGS = {"steps": 600, "batch_size": 96, "lr": 2e-3, "weight_decay": 0.05, "input_size": 64,
                  "seed": 0, "warmup": 50, "holdout": "test", "region_scenes": 12, "region_size": 256,
                  "cells_per_scene": 12, "channels_last": True}


def settings_key(model_name: str, settings: Dict) -> str:
    payload = json.dumps({"model": model_name, "generator": GENERATOR_VERSION, **settings}, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:10]


def default_checkpoint_path(model_name: str, settings: Optional[Dict] = None) -> str:
    """``$OVSS_D2_CACHE/tiny_clip/<model>-toyworld-<settings key>.pt`` (the file need not exist)."""
    settings = {**TRAIN_SETTINGS, **(settings or {})}
    return cache_path(TINY_CLIP, f"{model_name}-toyworld-{settings_key(model_name, settings)}.pt")


def _multi_positive_nce(logits: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE where ``pos`` (B, U) marks every text that describes each image."""
    loss_i = -(pos * logits.log_softmax(dim=1)).sum(1).div(pos.sum(1)).mean()
    loss_t = -(pos.T * logits.T.log_softmax(dim=1)).sum(1).div(pos.T.sum(1)).mean()
    return (loss_i + loss_t) / 2


def train_tiny_clip(model_name: str = "ovss-tiny-convnext", root: Optional[str] = None,
                    out_path: Optional[str] = None, progress: bool = True, **overrides) -> str:
    """Train a tiny CLIP on ToyWorld's caption corpus; returns the checkpoint path (reused when a
    checkpoint of the same model, generator and settings exists)."""
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
    norm = Normalizer(model)
    data = Batches(root, CORPUS_SPLIT, held_out(settings["holdout"]), rng)
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

