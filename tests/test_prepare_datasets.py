"""datasets/prepare_*.py on miniature copies of the official downloads (same file types, encodings
and folder layouts): output labels checked pixel by pixel against mappings written out here from
the official lists, including ignore and > 255 classes; a second run changes nothing; interrupted
runs resume; missing inputs name their archive."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import raw_datasets as rd
from ovss_d2.data.datasets import DatasetNotReadyError, register_all_benchmarks, verify_sem_seg_dataset
from ovss_d2.data.datasets.preparation import PREPARED_MARKER, MissingInputError, PreparationError


def run(script, root, *extra, workers=1):
    rd.load_prepare_script(script).main(["--root", str(root), "--workers", str(workers), *extra])


def read(path):
    with Image.open(path) as im:
        return im.mode, np.asarray(im)


def remap(raw, table, default):
    """Expected labels: ``table[v]`` for the listed raw values, ``default`` elsewhere (plain loop)."""
    out = np.full(raw.shape, default, np.int64)
    for v, cid in table.items():
        out[raw == v] = cid
    return out


def check_twice(script, root, *extra):
    """Runs ``script`` a second time and asserts that no file under ``root`` changed."""
    before = rd.snapshot(root)
    run(script, root, *extra)
    assert rd.snapshot(root) == before


@pytest.fixture(autouse=True)
def _registered_back():
    yield
    register_all_benchmarks()  # the tests register the benchmarks under temporary roots


def test_voc_20_and_21_classes(tmp_path):
    labels = rd.write_voc2012(tmp_path)
    run("prepare_voc", tmp_path, workers=2)  # the parallel path
    voc = tmp_path / "VOCdevkit" / "VOC2012" / "annotations_detectron2"
    assert sorted(os.listdir(voc / "voc20_val")) == ["2007_000032.png", "2007_000039.png", PREPARED_MARKER]
    for i, raw in labels.items():
        mode, out20 = read(voc / "voc20_val" / f"{i}.png")
        assert mode == "L"
        # official SegmentationClass: 0 background, 1..20 aeroplane..tvmonitor, 255 void
        np.testing.assert_array_equal(out20, remap(raw, {1: 0, 5: 4, 15: 14, 20: 19}, 255))
        _, out21 = read(voc / "voc21_val" / f"{i}.png")
        np.testing.assert_array_equal(out21, remap(raw, {0: 0, 1: 1, 5: 5, 15: 15, 20: 20}, 255))
    assert not (voc / "voc20_val" / "2007_000099.png").exists()  # not in val.txt
    check_twice("prepare_voc", tmp_path)
    register_all_benchmarks(str(tmp_path))
    for name in ("openvocab_voc_20_val", "voc_21_val", "vilseg_voc_unseen_val"):
        verify_sem_seg_dataset(name)


def test_ade20k_150(tmp_path):
    labels = rd.write_ade20k_150(tmp_path)
    run("prepare_ade20k_150", tmp_path)
    out_dir = tmp_path / "ADEChallengeData2016" / "annotations_detectron2" / "validation"
    for stem, raw in labels.items():
        mode, out = read(out_dir / f"{stem}.png")
        assert mode == "L"
        np.testing.assert_array_equal(out, remap(raw, {1: 0, 13: 12, 150: 149}, 255))  # 0 "other" -> ignore
    check_twice("prepare_ade20k_150", tmp_path)


def test_coco_stuff_171_and_182(tmp_path):
    labels = rd.write_coco_stuff(tmp_path, splits=("val2017", "train2017"))
    run("prepare_coco_stuff", tmp_path)
    ann = tmp_path / "coco-stuff" / "annotations_detectron2"
    # stuffthingmaps ids (0-based, with the 11 unused thing ids): person 0 -> 0, stop sign 12 -> 11,
    # toothbrush 89 -> 79, banner 91 -> 80, wood 181 -> 170; 255 unlabeled
    table = {0: 0, 12: 11, 89: 79, 91: 80, 181: 170}
    for (split, stem), raw in labels.items():
        _, out = read(ann / split / f"{stem}.png")
        np.testing.assert_array_equal(out, remap(raw, table, 255))
        # ViL-Seg's 182 classes (SPNet / CaGNet): the ids themselves, val2017 only
        if split == "val2017":
            _, out182 = read(ann / "val2017_182" / f"{stem}.png")
            np.testing.assert_array_equal(out182, remap(raw, {0: 0, 12: 12, 89: 89, 91: 91, 181: 181}, 255))
    assert sorted(os.listdir(ann / "val2017_182")) == ["000000000001.png", "000000000002.png", PREPARED_MARKER]
    check_twice("prepare_coco_stuff", tmp_path)
    register_all_benchmarks(str(tmp_path))
    for name in ("openvocab_coco_stuff_171_train", "openvocab_coco_stuff_171_val", "vilseg_coco_stuff_unseen_val"):
        verify_sem_seg_dataset(name)


def test_coco_stuff_unknown_label_is_an_error_naming_the_file(tmp_path):
    rd.write_coco_stuff(tmp_path, values=(0, 11, 255))  # 11 (street sign) is not a COCO-Stuff class
    with pytest.raises(PreparationError, match=r"000000000001\.png.*\[11\]"):
        run("prepare_coco_stuff", tmp_path, "--splits", "val2017")


def test_ade20k_847_16bit_and_resize(tmp_path):
    import cv2

    masks = rd.write_ade20k_full(tmp_path)
    run("prepare_ade20k_847", tmp_path)
    ade = tmp_path / "ADE20K_2021_17_01"
    # CAT-Seg's table: wall 2978 -> 0, building 312 -> 1, pier 1857 -> 255 (a class, not ignore),
    # shanties 2315 -> 256, adding machine 3148 -> 846; 7 is none of the 847, 0 unannotated
    table = {2978: 0, 312: 1, 1857: 255, 2315: 256, 3148: 846}
    assert sorted(os.listdir(ade / "annotations_detectron2" / "validation")) == [
        "ADE_val_00000001.png", "ADE_val_00000002.png", PREPARED_MARKER]
    for stem, raw in masks.items():
        mode, out = read(ade / "annotations_detectron2" / "validation" / f"{stem}.png")
        assert mode.startswith("I;16") and out.dtype == np.uint16
        expected = remap(raw, table, 65535)
        if raw.shape == (520, 528):  # short side 520 > 512: shrunk to 512 x round(528 / 520 * 512)
            expected = cv2.resize(expected.astype(np.int32), (520, 512), interpolation=cv2.INTER_NEAREST)
        np.testing.assert_array_equal(out, expected)
        with Image.open(ade / "images_detectron2" / "validation" / f"{stem}.jpg") as im:
            assert (im.height, im.width) == out.shape
    assert not (ade / "images_detectron2" / "validation" / "ADE_train_00000001.jpg").exists()
    check_twice("prepare_ade20k_847", tmp_path)
    register_all_benchmarks(str(tmp_path))
    verify_sem_seg_dataset("openvocab_ade20k_847_val")


def test_pascal_context_459_59_60_from_mat(tmp_path):
    from detectron2.data import DatasetCatalog

    maps = rd.write_pascal_context(tmp_path)
    assert "2010_001606" in maps
    run("prepare_pascal_context", tmp_path)
    ann = tmp_path / "VOCdevkit" / "VOC2010" / "annotations_detectron2"
    # LabelMap values = labels.txt: 1 accordion, 2 aeroplane, 65 cat, 284 person, 397 table,
    # 458 wood, 459 wool; 0 unlabeled. PC-59: aeroplane 0, cat 14, person 36, diningtable 49, wood 58.
    for i, raw in maps.items():
        mode, out459 = read(ann / "pc459_val" / f"{i}.png")
        assert mode.startswith("I;16")
        np.testing.assert_array_equal(out459, remap(raw, {1: 0, 2: 1, 65: 64, 284: 283, 397: 396, 458: 457,
                                                          459: 458}, 65535))
        mode, out59 = read(ann / "pc59_val" / f"{i}.png")
        assert mode == "L"
        np.testing.assert_array_equal(out59, remap(raw, {2: 0, 65: 14, 284: 36, 397: 49, 458: 58}, 255))
        _, out60 = read(ann / "pc60_val" / f"{i}.png")
        np.testing.assert_array_equal(out60, remap(raw, {2: 1, 65: 15, 284: 37, 397: 50, 458: 59}, 0))
    check_twice("prepare_pascal_context", tmp_path)
    register_all_benchmarks(str(tmp_path))
    # every val image is converted; the PC-459 / PC-59 / PC-60 splits are the methods' list without
    # 2010_001606, ViL-Seg's keeps it (its paper and CaGNet's test list: 5105 images)
    stems = {"openvocab_pcontext_459_val": ["2008_000002", "2010_006086"],
             "openvocab_pcontext_59_val": ["2008_000002", "2010_006086"],
             "pcontext_60_val": ["2008_000002", "2010_006086"],
             "vilseg_pcontext_unseen_val": ["2008_000002", "2010_001606", "2010_006086"]}
    for name, expected in stems.items():
        verify_sem_seg_dataset(name)
        dicts = DatasetCatalog.get(name)
        assert [os.path.basename(d["file_name"]) for d in dicts] == [f"{i}.jpg" for i in expected], name
        assert [os.path.basename(d["sem_seg_file_name"]) for d in dicts] == [f"{i}.png" for i in expected], name


def test_coco_object_from_stuffthingmaps(tmp_path):
    """As GroupViT's convert_coco_object.py: thing ids -> 1..80, stuff ids and unlabeled -> 0."""
    labels = rd.write_coco_stuff(tmp_path, values=(0, 12, 56, 89, 91, 150, 181, 255))
    run("prepare_coco_object", tmp_path)
    out_dir = tmp_path / "coco-stuff" / "annotations_detectron2" / "val2017_object"
    # person 0 -> 1, stop sign 12 -> 12 (street sign 11 is not a class), carrot 56 -> 52, toothbrush
    # 89 -> 80 (GroupViT's table); banner 91, roof 150, wood 181 and unlabeled 255 -> background 0
    table = {0: 1, 12: 12, 56: 52, 89: 80}
    for (_, stem), raw in labels.items():
        mode, out = read(out_dir / f"{stem}.png")
        assert mode == "L"
        np.testing.assert_array_equal(out, remap(raw, table, 0))
    check_twice("prepare_coco_object", tmp_path)
    register_all_benchmarks(str(tmp_path))
    verify_sem_seg_dataset("coco_object_81_val")


def test_coco_object_unknown_label_is_an_error_naming_the_file(tmp_path):
    rd.write_coco_stuff(tmp_path, values=(0, 25, 255))  # 25 (hat): a COCO thing id never annotated
    with pytest.raises(PreparationError, match=r"000000000001\.png.*\[25\]"):
        run("prepare_coco_object", tmp_path)


def test_interrupted_run_fails_at_startup_and_resumes(tmp_path, capsys):
    from helpers import tiny_cfg
    from ovss_d2.engine import check_datasets

    rd.write_ade20k_150(tmp_path, n=3)
    run("prepare_ade20k_150", tmp_path)
    out_dir = tmp_path / "ADEChallengeData2016" / "annotations_detectron2" / "validation"
    # what a kill leaves: the marker was removed when converting began, one file never written
    os.remove(out_dir / PREPARED_MARKER)
    os.remove(out_dir / "ADE_val_00000002.png")
    register_all_benchmarks(str(tmp_path))
    cfg = tiny_cfg(str(tmp_path / "out"), train="openvocab_ade20k_150_val", test="openvocab_ade20k_150_val")
    with pytest.raises(DatasetNotReadyError) as e:
        check_datasets(cfg)
    assert "not completely prepared" in str(e.value)
    assert f"python datasets/prepare_ade20k_150.py --root {tmp_path}" in str(e.value)
    capsys.readouterr()
    run("prepare_ade20k_150", tmp_path)
    assert "1 converted, 2 already done" in capsys.readouterr().out
    check_datasets(cfg)
    # a label removed after the preparation: the count no longer matches the marker
    os.remove(out_dir / "ADE_val_00000003.png")
    with pytest.raises(DatasetNotReadyError, match=r"(?s)holds 2 label maps, the preparation wrote 3.*--overwrite"):
        check_datasets(cfg)


def test_missing_dataset_fails_at_startup_with_path_and_command(tmp_path):
    from helpers import tiny_cfg
    from ovss_d2.engine import check_datasets

    register_all_benchmarks(str(tmp_path))
    cfg = tiny_cfg(str(tmp_path / "out"), train="openvocab_coco_stuff_171_train", test="openvocab_pcontext_459_val")
    with pytest.raises(DatasetNotReadyError) as e:
        check_datasets(cfg, verify_train=False)  # evaluation only: the training set need not be there
    msg = str(e.value)
    assert os.path.join(str(tmp_path), "VOCdevkit/VOC2010/JPEGImages") in msg
    assert f"python datasets/prepare_pascal_context.py --root {tmp_path}" in msg
    with pytest.raises(DatasetNotReadyError, match=r"(?s)coco-stuff/images/train2017.*prepare_coco_stuff.py"):
        check_datasets(cfg)


def test_missing_archive_is_named(tmp_path):
    rd.write_pascal_context(tmp_path)
    os.rename(tmp_path / "VOCdevkit" / "VOC2010" / "trainval", tmp_path / "elsewhere")
    with pytest.raises(MissingInputError) as e:
        run("prepare_pascal_context", tmp_path)
    msg = str(e.value)
    assert "VOC2010/trainval not found" in msg and "trainval.tar.gz" in msg and "unpack it in" in msg
    assert "VOCtrainval_03-May-2010.tar" not in msg  # only what is missing


def test_cli_exit_status_and_message(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(rd.REPO, "datasets", "prepare_voc.py"), "--root", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "VOCtrainval_11-May-2012.tar" in r.stderr and "Traceback" not in r.stderr
