import filecmp
import json
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from PIL import Image

from ovss_d2 import toyworld
from ovss_d2.toyworld import (HELD_OUT, SPLITS, TRAIN_CLASSES, VAL_CLASSES, VAL_UNSEEN, WIDE_CLASSES, WIDE_UNSEEN,
                              check_vocabulary, is_object, register_toyworld, tiny_clip)
from ovss_d2.toyworld.vocabulary import CAPTION_CLASSES, split_name

SIZES = {"train": 60, "val": 40, "captions": 40, "wide_val": 30}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("toyworld") / "w")
    toyworld.generate(root, sizes=SIZES, progress=False)
    register_toyworld(root, prefix="tw_test")
    return root


def test_vocabulary_splits_are_compositional():
    assert check_vocabulary() == []
    assert (len(TRAIN_CLASSES), len(VAL_CLASSES), len(WIDE_CLASSES)) == (31, 38, 68)
    assert len(set(WIDE_CLASSES)) == len(WIDE_CLASSES) and set(VAL_CLASSES) <= set(WIDE_CLASSES)
    assert not set(HELD_OUT) & (set(TRAIN_CLASSES) | set(CAPTION_CLASSES))
    assert set(VAL_UNSEEN) == set(VAL_CLASSES) - set(TRAIN_CLASSES)
    assert set(WIDE_UNSEEN) == set(WIDE_CLASSES) - set(TRAIN_CLASSES)
    assert any(not is_object(c) for c in VAL_UNSEEN), "an unseen stuff class besides unseen objects"
    for c in HELD_OUT:  # each word of a held-out pair is seen in at least two caption classes
        for w in c.split():
            assert sum(w in x.split() for x in CAPTION_CLASSES) >= 2, (c, w)


def test_generation_is_byte_identical(world, tmp_path):
    again = str(tmp_path / "again")
    toyworld.generate(again, sizes=SIZES, progress=False)
    files = ["meta.json"]
    for split, n in SIZES.items():
        for kind in ("images", "labels"):
            names = sorted(os.listdir(os.path.join(world, split, kind)))
            assert names == [f"{i:06d}.png" for i in range(n)]
            files += [os.path.join(split, kind, name) for name in names]
        files.append(os.path.join(split, "annotations.jsonl"))
    match, mismatch, errors = filecmp.cmpfiles(world, again, files, shallow=False)
    assert not mismatch and not errors and len(match) == len(files)


def _labels(world, split):
    return [np.asarray(Image.open(os.path.join(world, split, "labels", f"{i:06d}.png"))) for i in range(SIZES[split])]


def _present(world, split):
    vocab = SPLITS[split].vocabulary
    return set().union(*[{vocab[i] for i in np.unique(x)} for x in _labels(world, split)])


def test_each_split_shows_only_its_classes(world):
    assert _present(world, "train") <= set(TRAIN_CLASSES)
    assert not _present(world, "captions") & set(HELD_OUT)
    assert _present(world, "captions") - set(VAL_CLASSES), "the caption corpus shows more than the base world"
    assert _present(world, "val") <= set(VAL_CLASSES) and _present(world, "val") & set(VAL_UNSEEN)
    assert _present(world, "wide_val") & (set(WIDE_UNSEEN) - set(VAL_CLASSES))


def test_annotations_describe_the_label_map(world):
    for split, n in SIZES.items():
        vocab = SPLITS[split].vocabulary
        for r, label in zip(toyworld.read_annotations(world, split), _labels(world, split)):
            present = {vocab[i] for i in np.unique(label)}
            objects = {o["name"] for o in r["objects"]}
            assert objects | set(r["stuff"]) == present
            for o in r["objects"]:
                colour, shape = split_name(o["name"])
                assert colour in r["caption"] and shape in r["caption"], (o["name"], r["caption"])
                x0, y0, x1, y1 = o["box"]
                mask = label == vocab.index(o["name"])
                assert mask.sum() == o["area"] == mask[y0:y1, x0:x1].sum()
                # large enough for a stride-4 output at 128 px: at least 150 pixels, 10 px across
                assert o["area"] >= 150 and min(x1 - x0, y1 - y0) >= 10, o
            for s in r["stuff_boxes"]:
                x0, y0, x1, y1 = s["box"]
                assert (label[y0:y1, x0:x1] == vocab.index(s["name"])).all()


def test_splits_are_disjoint(world):
    def digests(split):
        return {Image.open(os.path.join(world, split, "images", f"{i:06d}.png")).tobytes() for i in range(SIZES[split])}
    all_digests = [digests(s) for s in SIZES]
    assert sum(len(d) for d in all_digests) == len(set().union(*all_digests))


def test_registered_datasets(world):
    assert len(DatasetCatalog.get("tw_test_train")) == SIZES["train"]
    assert MetadataCatalog.get("tw_test_train").stuff_classes == list(TRAIN_CLASSES)
    for name, classes, unseen in (("tw_test_val", VAL_CLASSES, VAL_UNSEEN),
                                  ("tw_test_wide_val", WIDE_CLASSES, WIDE_UNSEEN)):
        meta = MetadataCatalog.get(name)
        assert meta.stuff_classes == list(classes) and meta.unseen_classes == list(unseen)
        assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    caps = DatasetCatalog.get("tw_test_captions_train")
    assert len(caps) == SIZES["captions"] and os.path.isfile(caps[0]["file_name"]) and caps[0]["caption"]
    assert set(DatasetCatalog.get("tw_test_unlabeled_train")[0]) == {"file_name", "image_id"}
    objects = DatasetCatalog.get("tw_test_objects_val")
    meta = MetadataCatalog.get("tw_test_objects_val")
    vals = _labels(world, "val")
    for d, val in zip(objects, vals):  # every stuff pixel is background (0), objects keep their class
        label = np.asarray(Image.open(d["sem_seg_file_name"]))
        names = np.array(meta.stuff_classes)[label]
        expected = np.array([c if is_object(c) else "background" for c in VAL_CLASSES])[val]
        assert (names == expected).all()
    assert "toyworld_wide_val" in DatasetCatalog.list()  # the default ToyWorld is registered on import


def test_a_text_describes_every_item_it_fits():
    d, c, C = tiny_clip.describes, tiny_clip.class_content, tiny_clip.Content
    red_striped, red_dotted, red_wall = (c("red striped shape", "star"), c("red dotted shape", "circle"),
                                         c("red wall"))
    assert d(c("red striped shape"), red_striped) and not d(c("red striped shape"), red_dotted)
    assert d(C("object", "red", ""), red_dotted)  # "a red shape."
    assert not d(C("object", "red", ""), red_wall)
    assert d(C("object", "", "striped"), red_striped) and not d(C("object", "", "striped"), red_dotted)
    assert d(C("object", "red", "striped", "star"), red_striped)  # "a red striped star."
    assert not d(C("object", "red", "striped", "circle"), red_striped)
    assert d(C("colour", "red"), red_wall) and d(C("colour", "red"), red_striped)
    assert not d(C("colour", "red"), c("grass"))
    assert d(C("stuff", "", "wall"), red_wall) and not d(c("blue wall"), red_wall)
    rng = np.random.default_rng(0)
    for _ in range(100):  # generated texts require what they say
        text, req = tiny_clip.object_text("red", "striped", "star", rng)
        assert d(req, red_striped) and ("red" in text or "striped" in text)
        assert d(req, c("red dotted shape", "star")) == ("striped" not in text)
        assert d(req, c("blue striped shape", "star")) == ("red" not in text)
        assert d(req, c("red striped shape", "circle")) == ("star" not in text)


def test_the_batch_positives_are_every_text_item_pair_that_fits(world):
    batches = tiny_clip.Batches(world, "captions", tiny_clip.held_out("test"), np.random.default_rng(1))
    _, regions, cells = batches.draw_regions(6, 4, 4)
    items = batches.draw(30, 10, 5, 5) + regions + cells
    texts = list(dict.fromkeys(b[2] for b in items))
    requirement = {b[2]: b[4] for b in items}
    pos = tiny_clip.describes_matrix([requirement[t] for t in texts], [b[3] for b in items])
    expected = [[tiny_clip.describes(requirement[t], b[3]) for t in texts] for b in items]
    assert pos.tolist() == np.array(expected, dtype=np.float32).tolist()
    assert pos.sum(1).min() >= 1  # every item has its own text
    # the cell majorities computed once are each map's own
    best, cls = batches.cell_majorities(4)
    for i in list(batches.labels)[:20]:
        ref_best, ref_cls = tiny_clip.cell_majority(batches.labels[i], len(batches.vocabulary), (4, 4))
        assert torch.equal(best[i], ref_best) and torch.equal(cls[i], ref_cls)


def test_held_out_classes_never_reach_the_tiny_clip(world):
    batches = tiny_clip.Batches(world, "captions", tiny_clip.held_out("dev"), np.random.default_rng(0))
    _, regions, cells = batches.draw_regions(8, 4, 4)
    items = batches.draw(40, 20, 10, 10) + regions + cells
    excluded = set(HELD_OUT) | set(tiny_clip.DEV_HELD_OUT)
    for _, _, text, content, _ in items:
        if content.kind != "caption":
            name = f"{content.a} {content.b}".strip()
            assert name not in excluded
    for _, r in batches.records:
        assert not ({o["name"] for o in r["objects"]} | set(r["stuff"])) & excluded


def test_tiny_clip_learns_and_loads_as_open_clip(small_tiny_clip):
    from ovss_d2.modeling.clip import CLIPWrapper

    root, path = small_tiny_clip
    model, tokenizer = tiny_clip.load_tiny_clip(path)
    acc = tiny_clip.zero_shot_crop_accuracy(model, tokenizer, root=root)
    assert acc["seen_stuff"] > 5 * acc["chance"] and acc["seen_objects"] > 2 * acc["chance"], acc
    clip = CLIPWrapper("ovss-tiny-convnext", path)  # the ordinary loading path of every method
    for k, v in model.state_dict().items():
        assert torch.equal(clip.model.state_dict()[k], v), k


def test_toyworld_tag_without_checkpoint_says_how_to_train(tmp_path, monkeypatch):
    from ovss_d2.modeling.clip import CLIPWrapper

    monkeypatch.setenv("OVSS_D2_CACHE", str(tmp_path))
    key = tiny_clip.settings_key("ovss-tiny-convnext", tiny_clip.TRAIN_SETTINGS)
    expected = str(tmp_path / "tiny_clip" / f"ovss-tiny-convnext-toyworld-{key}.pt")
    assert tiny_clip.default_checkpoint_path("ovss-tiny-convnext") == expected  # below the cache root
    with pytest.raises(FileNotFoundError, match="no ToyWorld-trained ovss-tiny-convnext at .*tools/train_tiny_clip.py"):
        CLIPWrapper("ovss-tiny-convnext", "toyworld")


def test_toyworld_tag_loads_the_cached_tiny_clip(small_tiny_clip, tmp_path, monkeypatch):
    """The tag resolves through the weights-tag registry that ToyWorld registers into (modeling never
    imports ToyWorld): the cached checkpoint is read, and a teacher cache names its file."""
    from detectron2.config import CfgNode

    from ovss_d2.data.teacher_cache import teacher_name
    from ovss_d2.modeling.clip import CLIPWrapper, is_weights_tag

    assert is_weights_tag("toyworld")
    monkeypatch.setenv("OVSS_D2_CACHE", str(tmp_path))
    target = tiny_clip.default_checkpoint_path("ovss-tiny-convnext")
    os.makedirs(os.path.dirname(target))
    os.symlink(small_tiny_clip[1], target)
    clip = CLIPWrapper("ovss-tiny-convnext", "toyworld")
    assert clip.pretrained == target
    reference = CLIPWrapper("ovss-tiny-convnext", small_tiny_clip[1])
    for k, v in reference.model.state_dict().items():
        assert torch.equal(clip.model.state_dict()[k], v), k
    cfg = CfgNode({"MODEL": {"CLIP": {"NAME": "ovss-tiny-convnext", "PRETRAINED": "toyworld"}}})
    assert teacher_name(cfg) == f"ovss-tiny-convnext:toyworld:{os.path.basename(target)}"


def test_meta_json_lists_the_vocabularies(world):
    with open(os.path.join(world, "meta.json")) as f:
        meta = json.load(f)
    assert meta["version"] == toyworld.GENERATOR_VERSION
    assert meta["vocabularies"]["val"] == list(VAL_CLASSES) and meta["val_unseen"] == list(VAL_UNSEEN)
