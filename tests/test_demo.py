import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from helpers import REPO
from ovss_d2.predictor import Predictor, upsample_argmax

CONFIG = os.path.join(REPO, "configs", "toy", "sed_toy.yaml")
OPTS = ["MODEL.CLIP.PRETRAINED", "none", "MODEL.SED.CLIP_RESOLUTION", "(64, 64)"]


def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_in")
    sub = root / "sub"
    sub.mkdir()
    Image.fromarray(_rgb(40, 56, 0)).save(root / "good.jpg")
    Image.fromarray(_rgb(33, 47, 1)).save(sub / "good2.png")
    Image.fromarray(_rgb(30, 30, 2)[..., 0]).save(root / "gray.png")
    Image.fromarray(np.dstack([_rgb(30, 40, 3), np.full((30, 40), 200, np.uint8)])).save(root / "rgba.png")
    Image.fromarray(np.random.default_rng(4).integers(0, 65535, (36, 36)).astype(np.uint16)).save(root / "deep16.png")
    Image.fromarray(_rgb(64, 64, 5)).save(root / "truncated.jpg", quality=95)
    data = (root / "truncated.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "notes.txt").write_text("not an image")
    (root / "fake.png").write_text("this is text, not a PNG")
    writer = cv2.VideoWriter(str(root / "clip.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 7.0, (48, 32))
    for i in range(5):
        writer.write(_rgb(32, 48, 10 + i))
    writer.release()
    return root


def test_demo_on_a_mixed_folder(folder, tmp_path):
    out = tmp_path / "out"
    cmd = [sys.executable, os.path.join(REPO, "demo", "demo.py"), "--config-file", CONFIG, "--input", str(folder),
           "--output", str(out), "--vocabulary", "grass,sky,red circle", "--batch-size", "2", "--opts", *OPTS]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for stem, size in [("good", (40, 56)), ("sub/good2", (33, 47)), ("gray", (30, 30)), ("rgba", (30, 40)),
                       ("deep16", (36, 36))]:
        label = Image.open(out / f"{stem}_label.png")
        assert label.mode == "L" and label.size == (size[1], size[0]), stem
        assert np.asarray(label).max() < 3
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.mode == "RGB" and overlay.size[1] >= size[0] and overlay.size[0] > size[1]
        meta = json.loads((out / f"{stem}.json").read_text())
        assert meta["classes"] == ["grass", "sky", "red circle"] and meta["size"] == list(size)
        assert abs(sum(meta["present"].values()) - 1.0) < 1e-6 and set(meta["present"]) <= set(meta["classes"])
    for bad in ("truncated.jpg", "notes.txt", "fake.png"):
        assert f"skipped {folder / bad}" in proc.stdout, (bad, proc.stdout)
        assert not (out / (os.path.splitext(bad)[0] + "_label.png")).exists()
    assert "done: 5 images, 1 videos (5 frames); skipped: 3" in proc.stdout
    cap = cv2.VideoCapture(str(out / "clip_overlay.mp4"))
    assert cap.get(cv2.CAP_PROP_FPS) == pytest.approx(7.0) and int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 5
    cap.release()
    assert json.loads((out / "clip.json").read_text())["frames"] == 5


def test_vocabulary_sources(tmp_path):
    sys.path.insert(0, os.path.join(REPO, "demo"))
    import demo

    f = tmp_path / "vocab.txt"
    f.write_text("person, people\n# comment\ncar\n\n")
    assert demo.load_vocabulary(str(f)) == ["person, people", "car"]
    assert demo.load_vocabulary("cat, dog,grass") == ["cat", "dog", "grass"]
    assert len(demo.load_vocabulary("dataset:toyworld_val")) == 25


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return Predictor(CONFIG, opts=OPTS, max_size=256)


def test_text_encoder_runs_once_for_many_images(predictor):
    predictor.model.clip.text_forward_count = 0
    predictor.set_vocabulary(["cat", "dog", "grass", "sky"])
    once = predictor.model.clip.text_forward_count
    assert once >= 1
    for seed in range(4):
        predictor.predict(_rgb(40, 50, seed))
    predictor.predict_batch([_rgb(30, 30, 9), _rgb(20, 40, 8)], ["cat", "dog", "grass", "sky"])
    assert predictor.model.clip.text_forward_count == once


def test_large_image_and_sliding_window(predictor):
    big = np.zeros((3000, 4000, 3), np.uint8)
    big[:1500] = (120, 170, 230)
    pred = predictor.predict(big, ["sky", "grass"])
    assert pred.label.shape == (3000, 4000) and pred.scores.shape[-1] <= 256
    predictor.mode = "slide"
    predictor.window = 96
    pred = predictor.predict(_rgb(150, 230, 1))
    assert pred.label.shape == (150, 230)
    predictor.mode = "resize"


def test_label_png_is_16_bit_for_large_vocabularies(predictor, tmp_path):
    sys.path.insert(0, os.path.join(REPO, "demo"))
    import demo

    pred = predictor.predict(_rgb(20, 20, 3), [f"class {i}" for i in range(300)])
    demo.save_label(pred.label, 300, str(tmp_path / "l.png"))
    img = Image.open(tmp_path / "l.png")
    assert img.mode.startswith("I") and np.array_equal(np.asarray(img), pred.label)


def test_upsample_argmax_equals_full_interpolation():
    torch.manual_seed(0)
    scores = torch.randn(19, 7, 9)
    full = torch.nn.functional.interpolate(scores[None], size=(31, 40), mode="bilinear", align_corners=False)[0]
    assert torch.equal(upsample_argmax(scores, (31, 40), classes_per_chunk=4), full.argmax(0))
