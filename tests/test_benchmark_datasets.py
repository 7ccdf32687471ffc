"""The registered benchmarks: class lists against the official ones, per-benchmark settings, and
the one-command benchmark table on two miniature prepared benchmarks."""
import csv
import json
import os

import pytest
from detectron2.data import MetadataCatalog

import raw_datasets as rd
from ovss_d2.data.datasets import (BENCHMARKS, load_class_list, register_all_benchmarks, resolve_benchmarks,
                                   verify_sem_seg_dataset)

LENGTHS = {
    "openvocab_coco_stuff_171_train": 171, "openvocab_coco_stuff_171_val": 171, "openvocab_ade20k_847_val": 847,
    "openvocab_pcontext_459_val": 459, "openvocab_ade20k_150_val": 150, "openvocab_pcontext_59_val": 59,
    "openvocab_voc_20_val": 20, "voc_21_val": 21, "pcontext_60_val": 60, "coco_object_81_val": 81,
    "vilseg_voc_unseen_val": 20, "vilseg_pcontext_unseen_val": 59, "vilseg_coco_stuff_unseen_val": 182,
}

# (index, name) read from the official lists: CAT-Seg / SED / ERR-Seg datasets/{coco,ade847,pc459,ade150,
# pc59,voc20}.json and GroupViT's PascalVOCDataset / PascalContextDataset / COCOObjectDataset.
OFFICIAL_SAMPLES = {
    "openvocab_coco_stuff_171_val": [(0, "person"), (11, "stop sign"), (79, "toothbrush"), (80, "banner"),
                                     (160, "wall-concrete"), (170, "wood")],
    "openvocab_ade20k_847_val": [(0, "wall"), (1, "building, edifice"),
                                 (11, "person, individual, someone, somebody, mortal, soul"), (255, "pier"),
                                 (256, "shanties"), (846, "adding machine, totalizer, totaliser")],
    "openvocab_pcontext_459_val": [(0, "accordion"), (1, "aeroplane"), (64, "cat"), (396, "table"), (458, "wool")],
    "openvocab_ade20k_150_val": [(0, "wall"), (7, "bed"), (12, "person"), (149, "flag")],
    "openvocab_pcontext_59_val": [(0, "aeroplane"), (14, "cat"), (36, "person"), (49, "diningtable"), (58, "wood")],
    "openvocab_voc_20_val": [(0, "aeroplane"), (10, "diningtable"), (15, "pottedplant"), (19, "tvmonitor")],
    "voc_21_val": [(0, "background"), (1, "aeroplane"), (11, "table"), (16, "plant"), (20, "monitor")],
    "pcontext_60_val": [(0, "background"), (1, "airplane"), (40, "plant"), (50, "table"), (59, "wood")],
    "coco_object_81_val": [(0, "background"), (1, "person"), (62, "toilet"), (63, "tv"), (80, "toothbrush")],
    # SPNet's data/datasets/cocostuff/labels.txt (1-based there), words for ViL-Seg
    "vilseg_coco_stuff_unseen_val": [(0, "person"), (11, "street sign"), (12, "stop sign"), (90, "hair brush"),
                                     (91, "banner"), (171, "wall concrete"), (181, "wood")],
}


def test_every_benchmark_is_registered_with_the_right_vocabulary_size():
    assert {b.name for b in BENCHMARKS} == set(LENGTHS)
    for name, n in LENGTHS.items():
        names = MetadataCatalog.get(name).stuff_classes
        assert len(names) == n == len(set(names)), name


def test_class_names_match_the_official_lists():
    for name, samples in OFFICIAL_SAMPLES.items():
        names = MetadataCatalog.get(name).stuff_classes
        for i, expected in samples:
            assert names[i] == expected, (name, i)
    # the lists' raw ids: the 16-bit ADE20K full-release ids of CAT-Seg's table, PASCAL-Context's
    # 59-class subset of the 459 LabelMap values, stuffthingmaps ids (0-based COCO-Stuff ids)
    assert load_class_list("ade20k_847").raw_ids[:3] == (2978, 312, 2420)
    assert load_class_list("pascal_context_59").raw_ids[:5] == (2, 9, 18, 19, 22)
    assert load_class_list("coco_object_81").raw_ids[-3:] == (87, 88, 89)
    assert load_class_list("coco_stuff_182").raw_ids == tuple(range(182))


def test_per_benchmark_settings():
    crm = {"openvocab_ade20k_150_val": 32, "openvocab_ade20k_847_val": 48, "openvocab_pcontext_459_val": 48,
           "openvocab_pcontext_59_val": 24, "openvocab_voc_20_val": 16}
    for name, n in crm.items():
        assert MetadataCatalog.get(name).err_seg_crm_test == n
    for name, t in {"voc_21_val": 0.95, "pcontext_60_val": 0.05, "coco_object_81_val": 0.35}.items():
        meta = MetadataCatalog.get(name)
        assert meta.background_threshold == t and meta.background_class == 0
        assert meta.stuff_classes[0] == "background"
    for name in ("openvocab_ade20k_847_val", "openvocab_pcontext_459_val"):
        assert MetadataCatalog.get(name).ignore_label == 65535
    unseen = {"vilseg_voc_unseen_val": ["potted plant", "sheep", "sofa", "train", "tv monitor"],
              "vilseg_pcontext_unseen_val": ["cow", "motorbike", "sofa", "cat"]}
    for name, classes in unseen.items():
        assert MetadataCatalog.get(name).unseen_classes == classes
    coco = MetadataCatalog.get("vilseg_coco_stuff_unseen_val")
    assert len(coco.unseen_classes) == 15 and {"wall concrete", "playingfield", "clouds"} <= set(coco.unseen_classes)
    assert set(coco.unseen_classes) <= set(coco.stuff_classes)
    assert MetadataCatalog.get("openvocab_voc_20_val").unseen_classes == []
    # the CaGNet / SPNet novel ids (0-based COCO-Stuff ids) are ViL-Seg's 15 unseen classes
    novel = [20, 24, 32, 33, 40, 56, 86, 99, 105, 123, 144, 147, 148, 168, 171]
    assert sorted(coco.stuff_classes.index(c) for c in coco.unseen_classes) == novel
    # PASCAL-Context: the methods' 5104-image list is VOC 2010 val without one image; ViL-Seg keeps it
    for name in ("openvocab_pcontext_459_val", "openvocab_pcontext_59_val", "pcontext_60_val"):
        assert MetadataCatalog.get(name).excluded_images == ["2010_001606"]
    assert MetadataCatalog.get("vilseg_pcontext_unseen_val").excluded_images == []


def test_resolve_benchmarks():
    keys = [s.key for s in resolve_benchmarks(["openvocab", "a150", "voc_21_val"])]
    assert keys == ["a847", "pc459", "a150", "pc59", "pas20", "voc21"]
    assert len(resolve_benchmarks(["all"])) == 11
    with pytest.raises(KeyError, match="Unknown benchmark 'a151'.*a150"):
        resolve_benchmarks(["a151"])


def test_register_under_another_root(tmp_path):
    try:
        register_all_benchmarks(str(tmp_path))
        meta = MetadataCatalog.get("openvocab_ade20k_150_val")
        assert meta.image_root == os.path.join(str(tmp_path), "ADEChallengeData2016/images/validation")
        assert meta.err_seg_crm_test == 32 and len(meta.stuff_classes) == 150
    finally:
        register_all_benchmarks()


def test_benchmark_command_writes_one_table(tmp_path):
    """The training-free baseline (tiny random CLIP) on miniature PAS-20 and A-150, each with its own
    vocabulary, through tools/evaluate_benchmarks.py; the table holds what each evaluation wrote."""
    import importlib.util

    root = tmp_path / "data"
    rd.write_voc2012(root)
    rd.write_ade20k_150(root)
    rd.load_prepare_script("prepare_voc").main(["--root", str(root), "--workers", "1"])
    rd.load_prepare_script("prepare_ade20k_150").main(["--root", str(root), "--workers", "1"])
    spec = importlib.util.spec_from_file_location("evaluate_benchmarks",
                                                  os.path.join(rd.REPO, "tools", "evaluate_benchmarks.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "bench"
    env_before = os.environ.get("DETECTRON2_DATASETS")
    try:
        rows = tool.main([
            "--config-file", os.path.join(rd.REPO, "configs", "Base-OVSS.yaml"), "--benchmarks", "pas20", "a150",
            "--datasets-root", str(root), "--output-dir", str(out),
            "MODEL.CLIP.NAME", "ovss-tiny-vit", "MODEL.CLIP.PRETRAINED", "none", "MODEL.TEXT.TEMPLATES", "photo_of_a",
            "MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "32", "INPUT.MAX_SIZE_TEST", "64",
            "DATALOADER.NUM_WORKERS", "0"])
        verify_sem_seg_dataset("openvocab_voc_20_val")
    finally:
        if env_before is None:
            os.environ.pop("DETECTRON2_DATASETS", None)
        else:
            os.environ["DETECTRON2_DATASETS"] = env_before
        register_all_benchmarks()
    assert [r["benchmark"] for r in rows] == ["pas20", "a150"]
    with open(out / "benchmarks.json") as f:
        table = json.load(f)
    with open(out / "benchmarks.csv") as f:
        csv_rows = list(csv.DictReader(f))
    md = (out / "benchmarks.md").read_text().splitlines()
    assert md[2].startswith("| benchmark | dataset | classes | images | mIoU | fwIoU | mACC | pACC |")
    assert len(md) == 6 and md[4].startswith("| pas20 | openvocab_voc_20_val | 20 | 2 |")
    assert md[5].startswith("| a150 | openvocab_ade20k_150_val | 150 | 2 |")
    datasets = ["openvocab_voc_20_val", "openvocab_ade20k_150_val"]
    for row, crow, dataset, n in zip(table["benchmarks"], csv_rows, datasets, [20, 150]):
        with open(out / "inference" / dataset / "sem_seg_evaluation.json") as f:
            res = json.load(f)
        # evaluated with the benchmark's own vocabulary: one IoU per class of its list
        assert sum(k.startswith("IoU-") for k in res) == n
        assert row["dataset"] == dataset and row["classes"] == n and row["images"] == 2
        for m in ("mIoU", "fwIoU", "mACC", "pACC"):
            assert row[m] == pytest.approx(res[m]) and 0.0 <= row[m] <= 100.0
            assert float(crow[m]) == pytest.approx(res[m], abs=1e-4)
        assert row["mIoU-unseen"] is None and crow["mIoU-unseen"] == ""
    assert table["benchmarks"][1]["settings"] == {"err_seg_crm_test": 32}
