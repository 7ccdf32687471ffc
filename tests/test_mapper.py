import numpy as np
import torch
from detectron2.data import DatasetCatalog
from PIL import Image

from helpers import register_tiny, tiny_cfg
from ovss_d2.data import SemSegDatasetMapper
from ovss_d2.data.augmentations import PhotometricDistortion


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


def test_photometric_distortion_changes_colours_only():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (8, 9, 3), dtype=np.uint8)
    t = PhotometricDistortion(brightness=20.0, contrast=1.2, saturation=0.8, hue=10.0, contrast_first=True)
    out = t.apply_image(img)
    assert out.shape == img.shape and out.dtype == np.uint8 and not np.array_equal(out, img)
    seg = rng.integers(0, 5, (8, 9))
    assert np.array_equal(t.apply_segmentation(seg), seg)
    ident = PhotometricDistortion(0.0, 1.0, 1.0, 0.0, True).apply_image(img)
    assert np.array_equal(ident, img)
