import filecmp
import json
import os
import re

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ovss_d2.data import toyworld
from ovss_d2.data.toyworld import (ALL_CLASSES, OBJECTS, SEEN_CLASSES, STUFF, UNSEEN_CLASSES, check_vocabulary,
                                   register_toyworld)
from ovss_d2.data.toyworld import tiny_clip

SIZES = {"train": 60, "val": 40}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("toyworld") / "w")
    toyworld.generate(root, sizes=SIZES, progress=False)
    register_toyworld(root, prefix="tw_test")
    return root


def test_vocabulary_split_is_compositional():
    assert check_vocabulary() == []
    assert len(ALL_CLASSES) == len(set(ALL_CLASSES)) == 25
    assert set(UNSEEN_CLASSES) <= set(OBJECTS) and not set(UNSEEN_CLASSES) & set(SEEN_CLASSES)
    seen_words = {w for c in SEEN_CLASSES for w in c.split()}
    assert all(w in seen_words for c in UNSEEN_CLASSES for w in c.split())


def test_generation_is_byte_identical(world, tmp_path):
    again = str(tmp_path / "again")
    toyworld.generate(again, sizes=SIZES, progress=False)
    cmp = filecmp.dircmp(world, again)
    files = []
    for sub in ("train", "val"):
        for kind in ("images", "labels"):
            names = sorted(os.listdir(os.path.join(world, sub, kind)))
            assert names == sorted(os.listdir(os.path.join(again, sub, kind)))
            files += [os.path.join(sub, kind, n) for n in names]
        files.append(os.path.join(sub, "annotations.jsonl"))
    files.append("meta.json")
    match, mismatch, errors = filecmp.cmpfiles(world, again, files, shallow=False)
    assert not mismatch and not errors and len(match) == sum(SIZES.values()) * 2 + 3
    assert not cmp.left_only and not cmp.right_only


def _labels(world, split):
    return [np.asarray(Image.open(os.path.join(world, split, "labels", f"{i:06d}.png"))) for i in range(SIZES[split])]


def test_label_values_and_unseen_classes(world):
    train = np.concatenate([x.ravel() for x in _labels(world, "train")])
    val = np.concatenate([x.ravel() for x in _labels(world, "val")])
    assert train.max() < len(SEEN_CLASSES) and val.max() < len(ALL_CLASSES)
    assert set(np.unique(train)) == set(range(len(SEEN_CLASSES)))  # every seen class occurs
    unseen_ids = {ALL_CLASSES.index(c) for c in UNSEEN_CLASSES}
    assert unseen_ids & set(np.unique(val)), "val must contain unseen classes"
    # train labels index the seen vocabulary: no unseen object can be written there at all
    assert len(SEEN_CLASSES) == len(ALL_CLASSES) - len(UNSEEN_CLASSES)


def test_captions_name_what_is_in_the_image(world):
    for split, vocab in (("train", SEEN_CLASSES), ("val", ALL_CLASSES)):
        records = toyworld.read_annotations(world, split)
        for r, label in zip(records, _labels(world, split)):
            present = {vocab[i] for i in np.unique(label)}
            named = set(re.findall(r"(?:" + "|".join(OBJECTS) + r")", r["caption"]))
            assert named == {o["name"] for o in r["objects"]}
            assert named <= present, (r["caption"], present)
            stuff_named = {s for s in STUFF if s in r["caption"]}
            assert stuff_named == present & set(STUFF), (r["caption"], present)
            if split == "train":
                assert not named & set(UNSEEN_CLASSES)


def test_splits_are_disjoint(world):
    def digests(split):
        return {Image.open(os.path.join(world, split, "images", f"{i:06d}.png")).tobytes()
                for i in range(SIZES[split])}
    assert not digests("train") & digests("val")


def test_registered_datasets(world):
    train = DatasetCatalog.get("tw_test_train")
    val = DatasetCatalog.get("tw_test_val")
    assert len(train) == SIZES["train"] and len(val) == SIZES["val"]
    assert MetadataCatalog.get("tw_test_train").stuff_classes == list(SEEN_CLASSES)
    meta = MetadataCatalog.get("tw_test_val")
    assert meta.stuff_classes == list(ALL_CLASSES) and meta.unseen_classes == list(UNSEEN_CLASSES)
    assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    caps = DatasetCatalog.get("tw_test_captions_train")
    assert caps[0]["caption"].startswith("a ") and os.path.isfile(caps[0]["file_name"])
    assert set(DatasetCatalog.get("tw_test_unlabeled_train")[0]) == {"file_name", "image_id"}
    assert "toyworld_train" in DatasetCatalog.list()  # the default ToyWorld is registered on import
    with open(os.path.join(world, "meta.json")) as f:
        assert json.load(f)["unseen_classes"] == list(UNSEEN_CLASSES)


@pytest.fixture(scope="session")
def small_tiny_clip(tmp_path_factory):
    """A tiny CLIP trained briefly on a small ToyWorld, shared by the tests of the session."""
    root = str(tmp_path_factory.mktemp("tw_clip") / "w")
    toyworld.generate(root, sizes={"train": 300, "val": 60}, progress=False)
    out = str(tmp_path_factory.mktemp("c") / "c.pt")
    path = tiny_clip.train_tiny_clip("ovss-tiny-convnext", root=root, out_path=out, progress=False, steps=120,
                                     batch_size=64)
    return root, path


def test_tiny_clip_learns_and_loads_as_open_clip(small_tiny_clip):
    from ovss_d2.modeling.clip import CLIPWrapper

    root, path = small_tiny_clip
    model, tokenizer = tiny_clip.load_tiny_clip(path)
    acc = tiny_clip.zero_shot_crop_accuracy(model, tokenizer, root=root)
    assert acc["stuff"] > 5 * acc["chance"] and acc["seen_objects"] > 2 * acc["chance"], acc
    clip = CLIPWrapper("ovss-tiny-convnext", path)  # the ordinary loading path of every method
    for k, v in model.state_dict().items():
        assert torch.equal(clip.model.state_dict()[k], v), k


def test_toyworld_tag_without_checkpoint_says_how_to_train(tmp_path, monkeypatch):
    from ovss_d2.modeling.clip import CLIPWrapper

    monkeypatch.setenv("OVSS_D2_CACHE", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="tools/train_tiny_clip.py"):
        CLIPWrapper("ovss-tiny-convnext", "toyworld")
