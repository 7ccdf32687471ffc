"""demo/demo.py against what a careless user or a broken file gives it (issue 28): an output folder
among the inputs, braces in templates, a damaged video, vocabulary files in other encodings,
symbolic-link loops under a recursive glob, too many classes, a full output disk, ``dataset:``
without a name. Refusals must come before the model is built (``BAD_MODEL`` makes any build fail
with another message), in one line, with exit code 2."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
from PIL import Image

from helpers import REPO

CONFIG = os.path.join(REPO, "configs", "toy", "sed_toy.yaml")
OPTS = ["MODEL.CLIP.PRETRAINED", "none", "MODEL.SED.CLIP_RESOLUTION", "(64, 64)"]
BAD_MODEL = ["MODEL.CLIP.NAME", "no-such-clip"]


def _demo():
    sys.path.insert(0, os.path.join(REPO, "demo"))
    import demo

    return demo


def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def _argv(inputs, output, vocabulary="grass,sky", extra=(), opts=OPTS):
    return ["--config-file", CONFIG, "--input", *map(str, inputs), "--output", str(output),
            "--vocabulary", vocabulary, *extra, "--opts", *opts]


def _refused(argv, capsys) -> str:
    """The one-line error of a run refused before the model is built."""
    assert _demo().main(argv + BAD_MODEL) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("demo.py: error: ") and "\n" not in err and "no-such-clip" not in err, err
    return err


# ---- item 2: an output folder among the inputs -----------------------------------------------------
@pytest.fixture()
def photos(tmp_path):
    """A user's folder: two photos and the user's own IMG_001.json / IMG_001_label.png."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i in (1, 2):
        Image.fromarray(_rgb(24, 32, i)).save(folder / f"IMG_00{i}.png")
    (folder / "IMG_001.json").write_text('{"mine": true}')
    Image.fromarray(np.full((5, 5), 7, np.uint8)).save(folder / "IMG_001_label.png")
    return folder


def _untouched(folder):
    assert json.loads((folder / "IMG_001.json").read_text()) == {"mine": True}
    assert np.asarray(Image.open(folder / "IMG_001_label.png")).tolist() == [[7] * 5] * 5


@pytest.mark.parametrize("output", ["in", "in/seg", "in/seg/deeper"])
def test_output_inside_an_input_folder_is_refused(photos, output, capsys):
    err = _refused(_argv([photos], photos.parent / output), capsys)
    assert "is inside the input folder" in err and str(photos) in err
    _untouched(photos)
    assert not (photos / "seg").exists()


def test_output_beside_input_files_is_refused(photos, capsys):
    """A glob or files whose folder is --output: the outputs would land next to them."""
    for inputs in ([str(photos / "*.png")], [photos / "IMG_001.png", photos / "IMG_002.png"]):
        err = _refused(_argv(inputs, photos), capsys)
        assert "which holds the input" in err and "IMG_00" in err, err
    _untouched(photos)


def test_files_under_output_are_never_inputs(photos):
    """A recursive glob over the inputs' folder with --output below it: an earlier run's outputs
    there are not segmented again."""
    demo = _demo()
    seg = photos / "seg"
    seg.mkdir()
    Image.fromarray(_rgb(8, 8, 0)).save(seg / "IMG_001_overlay.png")
    args = demo.parse_args(_argv([str(photos / "**" / "*.png")], seg))
    _, _, inputs, missing = demo.check_arguments(args)
    assert sorted(inputs) == sorted(str(p) for p in photos.glob("*.png"))  # the user's IMG_001_label.png too
    assert missing == [(str(seg), "1 files inside --output named as this demo's outputs (*_overlay.png, "
                                  "*_label.png, *_overlay.mp4, *_overlay.part.mp4) not read as inputs")]


# ---- items 7, 12, 16: arguments refused before the model --------------------------------------------
@pytest.mark.parametrize("extra, words", [
    (["--templates", "a photo of a {{}}."], "--templates: Prompt template 'a photo of a {{}}.' must contain exactly "
                                            "one '{}' for the class name; it has none"),
    (["--templates", "a {name} of {}"], "it has 2 replacement fields, {name}, {}"),
    (["--templates", "{0} in a photo"], "it has {0}"),
    (["--templates", "a photo of {} }"], "Single '}' encountered"),
    (["--max-size", "0"], "--max-size must be a whole number of pixels, at least 32; got 0"),
    (["--max-size", "-5"], "got -5"),
    (["--max-size", "1"], "got 1"),
])
def test_values_that_give_one_class_everywhere_are_refused(photos, tmp_path, extra, words, capsys):
    assert words in _refused(_argv([photos / "IMG_001.png"], tmp_path / "out", extra=extra), capsys)


def test_dataset_prefix_without_a_name(photos, tmp_path, capsys):
    err = _refused(_argv([photos / "IMG_001.png"], tmp_path / "out", vocabulary="dataset:"), capsys)
    assert "dataset: names no dataset: write dataset:NAME" in err
    err = _refused(_argv(["dataset:"], tmp_path / "out"), capsys)
    assert "--input dataset: names no dataset" in err


def test_more_classes_than_a_label_png_holds_are_refused_first(photos, tmp_path, capsys):
    vocab = tmp_path / "many.txt"
    vocab.write_text("\n".join(f"class {i}" for i in range(65536)))
    err = _refused(_argv([photos / "IMG_001.png"], tmp_path / "out", vocabulary=str(vocab)), capsys)
    assert "65,536 classes do not fit a 16-bit label map (at most 65,535)" in err
    assert not (tmp_path / "out").exists()


def test_vocabulary_file_encodings(photos, tmp_path, capsys):
    """A BOM is not part of the first class (the run's JSON lists the names as read); a Latin-1
    file is refused naming the file, the byte offset and the fix."""
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("grass\ncaf\u00e9\n".encode("latin-1"))
    err = _refused(_argv([photos / "IMG_001.png"], tmp_path / "out", vocabulary=str(latin)), capsys)
    assert f"Vocabulary file {latin} is not UTF-8 text: byte 0xe9 at offset 9 (line 2)" in err and "iconv" in err
    bom = tmp_path / "bom.txt"
    bom.write_bytes("\ufeffgrass\nsky\n".encode("utf-8"))
    assert _demo().main(_argv([photos / "IMG_001.png"], tmp_path / "out", vocabulary=str(bom))) == 0
    assert json.loads((tmp_path / "out" / "IMG_001.json").read_text())["classes"] == ["grass", "sky"]


# ---- item 10: recursive globs over symbolic-link loops ----------------------------------------------
def test_recursive_glob_over_symlink_loops_ends(tmp_path):
    """Two links back up the tree: glob.glob(recursive=True) follows them until the paths are too
    long, which with two links takes exponential time. The walk runs in a subprocess under a timeout."""
    root = tmp_path / "loop"
    (root / "a" / "b").mkdir(parents=True)
    for rel in ("top.png", "a/mid.png", "a/b/deep.png"):
        Image.fromarray(_rgb(4, 4, 0)).save(root / rel)
    (root / "a" / "b" / "up").symlink_to("../..")
    (root / "a" / "again").symlink_to("..")
    code = ("import sys, json; sys.path.insert(0, sys.argv[1]); import demo; "
            "print(json.dumps(demo.collect_inputs([sys.argv[2]])))")
    proc = subprocess.run([sys.executable, "-c", code, os.path.join(REPO, "demo"), f"{root}/**/*.png"],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    found, missing = json.loads(proc.stdout.strip().splitlines()[-1])
    assert sorted(found) == sorted(str(root / rel) for rel in ("top.png", "a/mid.png", "a/b/deep.png"))
    assert missing == []


def test_glob_files_lists_what_glob_lists_without_loops(tmp_path, monkeypatch):
    import glob

    from ovss_d2.data.io import glob_files

    for rel in ("x.png", "a/y.png", "a/b/z.png", "a/b/w.jpg", ".hidden/h.png", "a/.h.png", "c/d/e/f.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    (tmp_path / "a" / "link").symlink_to(tmp_path / "c")  # a link, but no loop
    monkeypatch.chdir(tmp_path)
    for pattern in ("**/*.png", "**", "a/**/*.png", "**/b/*", "*/*.png", "**/.*.png", ".hidden/**", "a/**",
                    f"{tmp_path}/**/f.png", "**/e"):
        expected = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        found = glob_files(pattern)
        # the same files; a folder reached twice (c/ and a/link/) is listed under one of its paths
        assert found == sorted(found) and set(found) <= set(expected), pattern
        assert {os.path.realpath(p) for p in found} == {os.path.realpath(p) for p in expected}, pattern
    assert len(glob_files("**/f.png")) == 1 and len(glob.glob("**/f.png", recursive=True)) == 2


# ---- item 8: a video damaged in the middle -----------------------------------------------------------
def _video(path, frames, size=(48, 32), fps=10.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for i in range(frames):
        writer.write(_rgb(size[1], size[0], i))
    writer.release()
    return path


def test_damaged_video_is_incomplete_not_done(tmp_path, capsys):
    """A damaged and a sound video, in two folders (so their outputs go to two new folders)."""
    path, sound = _video(tmp_path / "cam1" / "clip.mp4", 40), _video(tmp_path / "cam2" / "ok.mp4", 3)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 4] + bytes(len(data) // 2) + data[3 * len(data) // 4:])
    cap = cv2.VideoCapture(str(path))  # what OpenCV reads of it, counted independently
    declared, readable = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0
    while cap.read()[0]:
        readable += 1
    cap.release()
    assert declared == 40 and 0 < readable < 40
    out = tmp_path / "out"
    assert _demo().main(_argv([path, sound], out)) == 0
    stdout = capsys.readouterr().out
    assert "done: 0 images, 1 videos (3 frames); skipped: 0; incomplete: 1" in stdout
    assert f"incomplete {path}: read {readable} of the 40 frames its container declares" in stdout
    for name, frames, complete in (("cam1/clip", readable, False), ("cam2/ok", 3, True)):
        meta = json.loads((out / f"{name}.json").read_text())
        assert (meta["frames"], meta["frames_declared"], meta["complete"]) == (frames, 40 if name == "cam1/clip" else 3,
                                                                               complete)
        check = cv2.VideoCapture(str(out / f"{name}_overlay.mp4"))
        assert int(check.get(cv2.CAP_PROP_FRAME_COUNT)) == frames
        check.release()
    assert not list(out.rglob("*.part*"))


# ---- item 15: a full output disk ---------------------------------------------------------------------
@pytest.fixture()
def full_disk(tmp_path):
    """A 8 KiB tmpfs: room for an empty folder, not for an overlay."""
    mount = tmp_path / "small_disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a small tmpfs (needs root): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _leftovers(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_full_disk_images_report_the_file_and_end_with_the_summary(full_disk, tmp_path, capsys):
    inputs = []
    for i in range(2):
        inputs.append(tmp_path / f"noise{i}.png")
        Image.fromarray(_rgb(96, 96, i)).save(inputs[-1])
    out = full_disk / "out"
    assert _demo().main(_argv(inputs, out)) == 1
    stdout = capsys.readouterr().out
    assert "done: 0 images, 0 videos (0 frames); skipped: 1" in stdout
    assert f"skipped {inputs[0]}: cannot write {out / 'noise0_overlay.png'}: No space left on device; its " \
           "outputs were removed" in stdout
    assert f"stopped: the disk of {out} is full" in stdout and "1 inputs not processed" in stdout
    assert _leftovers(out) == []  # no partial PNG, no .part


def test_full_disk_video_leaves_no_unplayable_file(full_disk, tmp_path, capsys):
    path = _video(tmp_path / "clip.mp4", 6, size=(64, 48), fps=5.0)
    out = full_disk / "out"
    assert _demo().main(_argv([path], out)) == 1
    stdout = capsys.readouterr().out
    assert f"skipped {path}: cannot write {out / 'clip_overlay.mp4'}: the video writer stored" in stdout
    assert "stopped: the disk of" in stdout
    assert _leftovers(out) == []  # no 0-byte JSON, no unplayable mp4
