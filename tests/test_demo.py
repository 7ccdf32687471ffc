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
    """--vocabulary is read by ovss_d2.utils.parse_vocabulary (tests/test_vocabulary.py)."""
    from detectron2.data import MetadataCatalog

    from ovss_d2.utils import parse_vocabulary

    f = tmp_path / "vocab.txt"
    f.write_text("person, people\n# comment\ncar\n\n")
    assert parse_vocabulary(str(f)) == ["person, people", "car"]
    assert parse_vocabulary("cat, dog,grass") == ["cat", "dog", "grass"]
    assert parse_vocabulary("dataset:toyworld_val") == list(MetadataCatalog.get("toyworld_val").stuff_classes)


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
    from ovss_d2.data.io import read_label, save_label

    pred = predictor.predict(_rgb(20, 20, 3), [f"class {i}" for i in range(300)])
    save_label(pred.label, 300, str(tmp_path / "l.png"))
    img = Image.open(tmp_path / "l.png")
    assert img.mode.startswith("I") and np.array_equal(np.asarray(img), pred.label)
    assert np.array_equal(read_label(str(tmp_path / "l.png")), pred.label)
    save_label(pred.label % 7, 7, str(tmp_path / "small.png"))
    assert Image.open(tmp_path / "small.png").mode == "L"
    assert sorted(os.listdir(tmp_path)) == ["l.png", "small.png"]  # written atomically: no .part left


def test_upsample_argmax_equals_full_interpolation():
    torch.manual_seed(0)
    scores = torch.randn(19, 7, 9)
    full = torch.nn.functional.interpolate(scores[None], size=(31, 40), mode="bilinear", align_corners=False)[0]
    assert torch.equal(upsample_argmax(scores, (31, 40), classes_per_chunk=4), full.argmax(0))


# ---- the demo as a new user meets it ---------------------------------------------------------------
def _import_demo():
    sys.path.insert(0, os.path.join(REPO, "demo"))
    import demo

    return demo


@pytest.fixture(scope="module")
def clashing_inputs(tmp_path_factory):
    """Two input folders with the same file name, and an image and a video sharing a stem."""
    root = tmp_path_factory.mktemp("clash")
    for folder, (h, w) in (("a", (20, 30)), ("b", (26, 22))):
        (root / folder).mkdir()
        Image.fromarray(_rgb(h, w, h)).save(root / folder / "000000.png")
    (root / "c").mkdir()
    Image.fromarray(_rgb(18, 24, 7)).save(root / "c" / "real.png")
    writer = cv2.VideoWriter(str(root / "c" / "real.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 5.0, (32, 24))
    for i in range(3):
        writer.write(_rgb(24, 32, 20 + i))
    writer.release()
    return root


@pytest.fixture(scope="module")
def clash_run(clashing_inputs, tmp_path_factory):
    """One CLI run over the clashing inputs, with --opts first (flags after it) and --device cuda."""
    out = tmp_path_factory.mktemp("clash_out") / "out"
    root = clashing_inputs
    cmd = [sys.executable, os.path.join(REPO, "demo", "demo.py"), "--opts", *OPTS,
           "--config-file", CONFIG, "--input", str(root / "a"), str(root / "b"), str(root / "c"),
           "--output", str(out), "--vocabulary", "grass,sky,water", "--device", "cuda"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root, out, proc


def test_no_output_is_overwritten(clash_run):
    root, out, proc = clash_run
    assert "done: 3 images, 1 videos (3 frames); skipped: 0" in proc.stdout
    expected = {"a/000000": root / "a" / "000000.png", "b/000000": root / "b" / "000000.png",
                "c/real_png": root / "c" / "real.png", "c/real_mp4": root / "c" / "real.mp4"}
    for name, source in expected.items():
        meta = json.loads((out / f"{name}.json").read_text())
        assert meta.get("image", meta.get("video")) == str(source)
    for name in ("a/000000", "b/000000", "c/real_png"):
        size = Image.open(expected[name]).size
        assert Image.open(out / f"{name}_label.png").size == size
    assert (out / "c" / "real_mp4_overlay.mp4").is_file()
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert len(files) == 3 * 3 + 2  # 3 images x (overlay, label, json) + video (overlay, json)
    assert f"renamed {root / 'c' / 'real.png'} -> {out / 'c' / 'real_png'}*" in proc.stdout
    assert f"input paths relative to {root}" in proc.stdout


def test_flags_after_opts_are_read_as_flags(clash_run):
    demo = _import_demo()
    args = demo.parse_args(["--opts", "A", "1", "--config-file", "c.yaml", "--input", "x", "--output", "o",
                            "--vocabulary", "v", "--opts", "B", "-2"])
    assert args.config_file == "c.yaml" and args.output == "o" and args.input == ["x"]
    assert args.opts == ["A", "1", "B", "-2"]
    assert clash_run[2].returncode == 0  # the CLI run above had --opts first


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_device_cuda_without_gpu_runs_on_the_cpu(clash_run):
    assert "CUDA is not available: running on the CPU" in clash_run[2].stderr


def test_no_futurewarning_on_a_run(clash_run):
    assert "FutureWarning" not in clash_run[2].stderr and "jit" not in clash_run[2].stderr


def test_output_names_are_unique_and_follow_the_common_folder():
    demo = _import_demo()
    names = demo.output_names(["x/a/1.png", "x/b/1.png", "x/b/1.mp4", "x/b/1.JPG", "x/b/2.png"])
    assert names == {"x/a/1.png": "a/1", "x/b/1.png": "b/1_png", "x/b/1.mp4": "b/1_mp4",
                     "x/b/1.JPG": "b/1_jpg", "x/b/2.png": "b/2"}
    assert demo.output_names(["p/q.png"]) == {"p/q.png": "q"}
    assert demo.output_names(["p/q.png", "p/Q.PNG"]) == {"p/q.png": "q_png", "p/Q.PNG": "Q_png_2"}


# Each bad argument: exit code 2, one line naming the fix, nothing built. A CLIP name that does not
# exist makes any model build fail with another message, so these errors come before the model.
BAD_MODEL = ["MODEL.CLIP.NAME", "no-such-clip"]


@pytest.mark.parametrize("change, words", [
    ({"--vocabulary": "classes.txt"}, "Vocabulary file 'classes.txt' not found"),
    ({"--vocabulary": "dataset:nope"}, "no registered dataset 'nope'"),
    ({"--vocabulary": " , "}, "The vocabulary is empty"),
    ({"--output": "FILE"}, "is a file, not a folder"),
    ({"--output": "FILE/sub"}, "cannot be written"),
    ({"--weights": "missing.pth"}, "--weights missing.pth not found"),
    ({"--weights": "FILE"}, "is not a checkpoint: it starts with b'x'"),
    ({"--input": "nothing_here/*.png"}, "no image or video found"),
    ({"--templates": "no_such_set"}, "Unknown prompt template set"),
    ({"--config-file": "missing.yaml"}, "--config-file missing.yaml not found: give a config such as"),
    ({"--batch-size": "0"}, "--batch-size must be at least 1, --limit at least 0."),
])
def test_bad_arguments_fail_first_with_one_line(change, words, folder, tmp_path, capsys):
    demo = _import_demo()
    (tmp_path / "file").write_text("x")
    args = {"--config-file": CONFIG, "--input": str(folder / "good.jpg"), "--output": str(tmp_path / "out"),
            "--vocabulary": "grass,sky"}
    args.update({k: v.replace("FILE", str(tmp_path / "file")) for k, v in change.items()})
    argv = [t for k, v in args.items() for t in (k, v)] + ["--opts", *OPTS, *BAD_MODEL]
    assert demo.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("demo.py: error: ") and "\n" not in err and words in err, err


def test_duplicate_class_warns_once(folder, tmp_path):
    cmd = [sys.executable, os.path.join(REPO, "demo", "demo.py"), "--config-file", CONFIG, "--input",
           str(folder / "good.jpg"), "--output", str(tmp_path), "--vocabulary", "grass,sky,Grass", "--opts", *OPTS]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if line.startswith("demo.py: warning:")]
    assert len(warned) == 1 and "'grass' at positions 0, 2" in warned[0]
    assert set(json.loads((tmp_path / "good.json").read_text())["present"]) <= {"grass", "sky"}
