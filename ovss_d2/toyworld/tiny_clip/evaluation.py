"""Zero-shot evaluation of a tiny CLIP on ToyWorld's evaluation splits: object crops and stuff
windows against the prompts of the vocabulary, and the dense features' stride-32 cells."""
from typing import Dict, Optional, Sequence

import open_clip
import torch
import torch.nn.functional as F

from ...checkpoint import load_checkpoint_file
from ...modeling.clip import CLIPWrapper
from ..generator import default_root, generate
from ..vocabulary import HELD_OUT, VAL_CLASSES, VAL_UNSEEN, WIDE_CLASSES, WIDE_UNSEEN, is_object
from .corpus import Normalizer, cell_majority, crop_items, crops, label_map, load_split

PROMPT = "a photo of a {}."  # the toy configs' template ("photo_of_a")
EVAL_SETS = {"val": (VAL_CLASSES, VAL_UNSEEN), "wide_val": (WIDE_CLASSES, WIDE_UNSEEN)}


def _groups(names: Sequence[str], unseen: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Masks of the items per group. With the development pairs as ``unseen``, the test pairs
    (never trained either) belong to no group."""
    obj = torch.tensor([is_object(n) for n in names])
    new = torch.tensor([n in unseen for n in names])
    seen = ~new & torch.tensor([n not in HELD_OUT or n in unseen for n in names])
    return {"seen_objects": obj & seen, "unseen_objects": obj & new, "seen_stuff": ~obj & seen,
            "unseen_stuff": ~obj & new, "stuff": ~obj & (seen | new)}


def _group_accuracies(names: Sequence[str], correct: torch.Tensor, unseen: Sequence[str],
                      num_classes: int) -> Dict[str, float]:
    """Accuracy (%) and count per group of :func:`_groups` from the items' class names and their
    0/1 ``correct`` (N,), with the chance level of ``num_classes``."""
    res = {"chance": 100.0 / num_classes}
    for k, m in _groups(names, unseen).items():
        res[k] = 100.0 * correct[m].mean().item() if m.any() else float("nan")
        res[f"n_{k}"] = int(m.sum())
    return res


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
    norm = Normalizer(model)
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
    return _group_accuracies(names, correct, unseen, len(classes))


@torch.no_grad()
def dense_cell_accuracy(model, tokenizer, root: Optional[str] = None, split: str = "val", input_size: int = 256,
                        min_fraction: float = 0.5, unseen: Optional[Sequence[str]] = None,
                        model_name: str = "ovss-tiny-convnext") -> Dict[str, float]:
    """How well the dense features localise: each scene at ``input_size`` through the ConvNeXt
    trunk, every stride-32 cell's embedding (the CLIP head on that pixel) classified against the
    vocabulary's prompts; top-1 accuracy (%) over the cells that are at least ``min_fraction``
    one class, in the same groups as :func:`zero_shot_crop_accuracy`."""
    root = generate(root or default_root(), progress=False)
    classes, split_unseen = EVAL_SETS[split]
    unseen = split_unseen if unseen is None else unseen
    wrapper = CLIPWrapper(model_name, "none")
    wrapper.model.load_state_dict(model.state_dict())
    wrapper.eval()
    norm = Normalizer(model)
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
            best, cls = cell_majority(label_map(root, split, records[s + k]), len(classes), (h, w))
            keep = best >= min_fraction
            names += [classes[c] for c in cls[keep].tolist()]
            correct.append((pred[k][keep] == cls[keep]).float())
    return _group_accuracies(names, torch.cat(correct), unseen, len(classes))


def load_tiny_clip(path: str):
    """The open_clip model and tokenizer of a tiny-CLIP checkpoint."""
    ckpt = load_checkpoint_file(path)  # data only: tensors, the model name and the settings
    model = CLIPWrapper(ckpt["name"], "none").model  # registers the tiny models, built without the random-init log
    model.load_state_dict(ckpt["state_dict"])
    return model, open_clip.get_tokenizer(ckpt["name"])


def selection_report(path: str, root: Optional[str] = None) -> Dict[str, Dict[str, float]]:
    """Crop and cell accuracies of a checkpoint on both evaluation sets (test unseen classes)."""
    model, tokenizer = load_tiny_clip(path)
    return {f"{kind}_{split}": fn(model, tokenizer, root=root, split=split)
            for split in EVAL_SETS for kind, fn in (("crops", zero_shot_crop_accuracy), ("cells", dense_cell_accuracy))}


