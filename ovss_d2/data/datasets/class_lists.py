"""The class lists of the benchmark datasets (package data in ``lists/*.json``).

Each list holds, in contiguous-id order, the class name used as text (synonyms separated by
``", "``, as the methods' released code spells them) and the class's id in the official raw
annotation (``raw_id``: a stuffthingmaps pixel value, an ADE20K full-release class index, a
PASCAL-Context ``LabelMap`` value, a COCO category id, ...). The prepare scripts map raw ids to
contiguous ids with these lists; the registered datasets take their ``stuff_classes`` from them.

=====================  =====  ==========================================================
key                    N      names from
=====================  =====  ==========================================================
coco_stuff_171         171    CAT-Seg / SED / ERR-Seg ``datasets/coco.json``
coco_stuff_182         182    the 171 + the 11 never-annotated COCO thing ids, as SPNet / CaGNet count
                              COCO-Stuff (ViL-Seg's protocol)
ade20k_150             150    CAT-Seg / SED / ERR-Seg ``datasets/ade150.json``
ade20k_847             847    CAT-Seg / SED / ERR-Seg ``datasets/ade847.json`` (synonyms)
pascal_context_459     459    CAT-Seg / SED / ERR-Seg ``datasets/pc459.json``
pascal_context_59      59     CAT-Seg / SED / ERR-Seg ``datasets/pc59.json``
voc_20                 20     CAT-Seg / SED / ERR-Seg ``datasets/voc20.json``
voc_21                 21     GroupViT ``PascalVOCDataset`` (background = 0), used by ZeroSeg
pascal_context_60      60     GroupViT ``PascalContextDataset`` (background = 0)
coco_object_81         81     GroupViT ``COCOObjectDataset`` (background = 0); raw ids: stuffthingmaps
=====================  =====  ==========================================================

Names are stored stripped of surrounding spaces (the official ``ade150.json`` writes ``"bed "``;
prompts are whitespace-normalised by the CLIP tokenizer, so the text embedding is the same).
"""
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import List, Tuple

LISTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lists")


@dataclass(frozen=True)
class ClassList:
    key: str
    names: Tuple[str, ...]
    raw_ids: Tuple[int, ...]
    source: str
    raw_id_meaning: str

    def __len__(self) -> int:
        return len(self.names)


def available_class_lists() -> List[str]:
    return sorted(f[:-5] for f in os.listdir(LISTS_DIR) if f.endswith(".json"))


@lru_cache(maxsize=None)
def load_class_list(key: str) -> ClassList:
    """The class list ``key`` (see the module docstring for the keys)."""
    path = os.path.join(LISTS_DIR, f"{key}.json")
    if not os.path.isfile(path):
        raise KeyError(f"No class list {key!r} (looked for {path}); available: {available_class_lists()}")
    with open(path) as f:
        d = json.load(f)
    names = tuple(c["name"] for c in d["classes"])
    raw_ids = tuple(int(c["raw_id"]) for c in d["classes"])
    if len(names) != d["num_classes"] or len(set(names)) != len(names):
        raise ValueError(f"Class list {path} is corrupt: {len(names)} names for num_classes {d['num_classes']}, "
                         f"{len(names) - len(set(names))} duplicates.")
    return ClassList(key, names, raw_ids, d["source"], d["raw_id_meaning"])


def class_names(key: str) -> List[str]:
    return list(load_class_list(key).names)
