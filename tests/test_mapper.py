import random

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog
from PIL import Image

from helpers import register_tiny, tiny_cfg
from ovss_d2.data import SemSegDatasetMapper


def test_training_sample_is_padded_with_ignore_and_keeps_labels(tmp_path):
    register_tiny("mapper_tiny", str(tmp_path / "d"), n=2)
    cfg = tiny_cfg(str(tmp_path), train="mapper_tiny", test="mapper_tiny")
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.MIN_SIZE_TRAIN = (48,)
    cfg.INPUT.SIZE_DIVISIBILITY = 40
    cfg.INPUT.RANDOM_FLIP = "none"
    d = DatasetCatalog.get("mapper_tiny")[0]
    out = SemSegDatasetMapper(cfg, is_train=True)(d)
    assert out["image"].shape == (3, 80, 80) and out["sem_seg"].shape == (80, 80)
    label = np.asarray(Image.open(d["sem_seg_file_name"]))
    assert torch.equal(out["sem_seg"][:48, :64], torch.from_numpy(label.astype(np.int64)))
    assert (out["sem_seg"][48:] == 255).all() and (out["sem_seg"][:, 64:] == 255).all()
    assert (out["image"][:, 48:] == 128).all()


def test_sixteen_bit_labels_survive_resize(tmp_path):
    img_dir, gt_dir = tmp_path / "images", tmp_path / "labels"
    img_dir.mkdir()
    gt_dir.mkdir()
    label = (np.arange(20 * 30).reshape(20, 30) % 700).astype(np.uint16)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(img_dir / "a.jpg")
    Image.fromarray(label).save(gt_dir / "a.png")
    cfg = tiny_cfg(str(tmp_path))
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.MIN_SIZE_TRAIN = (40,)
    cfg.INPUT.RANDOM_FLIP = "none"
    out = SemSegDatasetMapper(cfg, is_train=True)(
        {"file_name": str(img_dir / "a.jpg"), "sem_seg_file_name": str(gt_dir / "a.png")})
    assert out["sem_seg"].shape == (40, 60)
    assert torch.equal(out["sem_seg"][::2, ::2], torch.from_numpy(label.astype(np.int64)))


def _colour_aug_cfg(tmp_path, enabled=True):
    cfg = tiny_cfg(str(tmp_path))
    cfg.INPUT.CROP.ENABLED = False
    cfg.INPUT.MIN_SIZE_TRAIN = (20,)  # the image's own size: the resize is the identity
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.COLOR_AUG_SSD = enabled
    return cfg


def test_colour_augmentation_is_detectron2s_color_aug_ssd(tmp_path):
    """INPUT.COLOR_AUG_SSD appends detectron2's own ColorAugSSDTransform (point_rend), for RGB
    images, with the defaults the authors' mappers use (hue +-18 of OpenCV's 0-180 units)."""
    from detectron2.data import transforms as T
    from detectron2.projects.point_rend import ColorAugSSDTransform

    from ovss_d2.data.dataset_mapper import build_sem_seg_augmentations

    cfg = _colour_aug_cfg(tmp_path)
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.RANDOM_FLIP = "horizontal"
    augs = build_sem_seg_augmentations(cfg, is_train=True)
    assert [type(a) for a in augs] == [T.ResizeShortestEdge, T.RandomCrop_CategoryAreaConstraint,
                                       ColorAugSSDTransform, T.RandomFlip]  # the authors' order
    color = augs[2]
    assert color.is_rgb and (color.brightness_delta, color.hue_delta) == (32, 18)
    assert (color.contrast_low, color.contrast_high) == (color.saturation_low, color.saturation_high) == (0.5, 1.5)
    assert not any(isinstance(a, ColorAugSSDTransform) for a in build_sem_seg_augmentations(cfg, is_train=False))


def test_mapper_colours_equal_color_aug_ssd_for_the_same_seed(tmp_path):
    """The mapper's training image is what ColorAugSSDTransform gives for the same Python seed
    (the loader seeds ``random`` per sample); the label map is untouched."""
    from detectron2.projects.point_rend import ColorAugSSDTransform

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    label = rng.integers(0, 3, (20, 24), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(label).save(tmp_path / "a_label.png")
    mapper = SemSegDatasetMapper(_colour_aug_cfg(tmp_path), is_train=True)
    record = {"file_name": str(tmp_path / "a.png"), "sem_seg_file_name": str(tmp_path / "a_label.png")}
    changed = 0
    for seed in range(6):
        random.seed(seed)
        out = mapper(record)
        random.seed(seed)
        expected = ColorAugSSDTransform(img_format="RGB").apply_image(image.copy())
        assert np.array_equal(out["image"].permute(1, 2, 0).numpy(), expected), seed
        assert torch.equal(out["sem_seg"], torch.from_numpy(label.astype(np.int64)))
        changed += not np.array_equal(expected, image)
    assert changed >= 4  # the augmentation is on (each of its 4 parts fires with probability 1/2)
    plain = SemSegDatasetMapper(_colour_aug_cfg(tmp_path, enabled=False), is_train=True)(record)
    assert np.array_equal(plain["image"].permute(1, 2, 0).numpy(), image)


def test_colour_augmentation_without_point_rend_names_the_fix(tmp_path, monkeypatch):
    """A detectron2 installed without its projects fails only when COLOR_AUG_SSD is on, naming the fix."""
    import sys

    from ovss_d2.data.dataset_mapper import build_sem_seg_augmentations

    monkeypatch.setitem(sys.modules, "detectron2.projects.point_rend", None)  # import now raises ImportError
    assert len(build_sem_seg_augmentations(_colour_aug_cfg(tmp_path, enabled=False), is_train=True)) == 1
    with pytest.raises(ImportError) as e:
        build_sem_seg_augmentations(_colour_aug_cfg(tmp_path), is_train=True)
    msg = str(e.value)
    assert "detectron2.projects.point_rend" in msg and "INPUT.COLOR_AUG_SSD False" in msg
    assert "pip install" in msg and "tools/install_env.sh" in msg
