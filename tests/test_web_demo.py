"""The web demo (demo/app.py): its request logic on its own, then the real page in headless
Chromium (Debian's, driven by Playwright), compared with Predictor.predict run here.

Without Chromium, Playwright or Gradio the browser tests skip with the reason; with CI set they
fail instead (.ci/run installs all three)."""
import importlib.util
import os
import re
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import REPO
from ovss_d2.engine import load_config
from ovss_d2.predictor import Predictor

sys.path.insert(0, os.path.join(REPO, "demo"))
sys.path.insert(0, os.path.join(REPO, "tools"))
import app  # noqa: E402
import web_demo_screenshot as browser_tools  # noqa: E402

CONFIG = os.path.join(REPO, "configs", "toy", "sed_toy.yaml")
OPTS = ["MODEL.SED.CLIP_RESOLUTION", "(64, 64)"]
CLASSES = ["grass", "sky", "red circle", "water"]
MAX_MEGAPIXELS = 0.05  # small limits, so that small files can be "too large"
MAX_UPLOAD_MB = 0.1


def _scene(h=72, w=90, seed=0):
    """Sky above grass with a red disc, plus noise: an image the tiny model splits into several classes."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    img[: h // 2] = (110, 170, 230)
    img[h // 2:] = (70, 125, 45)
    yy, xx = np.mgrid[:h, :w]
    img[(yy - h * 0.6) ** 2 + (xx - w * 0.3) ** 2 < (h / 5) ** 2] = (225, 35, 35)
    return np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A checkpoint of the tiny SED with random weights (CLIP included)."""
    torch.manual_seed(0)
    model = Predictor(CONFIG, opts=["MODEL.CLIP.PRETRAINED", "none", *OPTS]).model
    path = str(tmp_path_factory.mktemp("web_weights") / "tiny_sed.pth")
    torch.save({"model": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def predictor(weights):
    """The reference: the same config and checkpoint, run in the test process."""
    return Predictor(CONFIG, weights, opts=OPTS)


@pytest.fixture()
def web(predictor, tmp_path):
    return app.WebDemo(predictor, title="test", max_pixels=MAX_MEGAPIXELS * 1e6, workdir=str(tmp_path))


# ---- the request logic, without a browser ---------------------------------------------------------------
def test_class_box_follows_the_vocabulary_rules():
    assert app.vocabulary_from_text(" grass, sky ,red circle ") == (["grass", "sky", "red circle"], [])
    lines = "person, people\n# a comment\n\ncar\n"
    assert app.vocabulary_from_text(lines) == (["person, people", "car"], [])
    assert app.vocabulary_from_text("dataset:toyworld_val")[0] == app.default_vocabulary(app_cfg())
    names, notes = app.vocabulary_from_text("sky, grass, Sky")
    assert names == ["sky", "grass", "Sky"] and len(notes) == 1 and "more than once" in notes[0]
    for bad, message in [("  ", "The vocabulary is empty"), ("dataset:nope", "no registered dataset"),
                         (REPO, "does not read files"), ("classes.txt", "does not read files")]:
        with pytest.raises(app.InputError, match=message):
            app.vocabulary_from_text(bad)


def app_cfg():
    return load_config(CONFIG)


def test_default_vocabulary_and_examples_come_from_toyworld(tmp_path):
    from detectron2.data import MetadataCatalog
    from ovss_d2.toyworld import render_scene

    assert app.default_vocabulary(app_cfg()) == list(MetadataCatalog.get("toyworld_val").stuff_classes)
    paths = app.toyworld_examples(str(tmp_path), n=2)
    for i, path in enumerate(paths):
        assert np.array_equal(np.asarray(Image.open(path)), render_scene("val", i)["image"])


class _Progress:
    """Records the steps reported; falsy like a gr.Progress that tracks no iterable."""

    def __init__(self):
        self.steps = []

    def __call__(self, fraction, desc=None):
        self.steps.append(desc)

    def __len__(self):
        return 0


def test_segment_matches_the_predictor_and_caches_text(web, predictor, tmp_path):
    image = _scene()
    path = str(tmp_path / "scene.png")
    Image.fromarray(image).save(path)
    progress = _Progress()
    predictor.set_vocabulary(["sky"])
    answer = web.segment(path, ", ".join(CLASSES), progress)
    assert progress.steps == ["Reading the image", "Embedding 4 class names (once per vocabulary)",
                              "Segmenting 90x72 on cpu", "Drawing"]
    expected = predictor.predict(image, CLASSES).label
    assert np.array_equal(np.asarray(Image.open(answer.label_path)), expected)
    counts = np.bincount(expected.reshape(-1), minlength=len(CLASSES))
    assert sorted((c, n) for c, n, _ in answer.rows) == sorted((c, int(n)) for c, n in zip(CLASSES, counts) if n)
    assert [s for _, _, s in answer.rows] == pytest.approx(sorted(100 * counts[counts > 0] / counts.sum())[::-1])
    assert answer.status.startswith("**Done:**") and answer.overlay.shape[0] >= image.shape[0]
    text_forwards = predictor.model.clip.text_forward_count
    web.segment(path, ", ".join(CLASSES))
    web.segment(path, "grass, sky")
    web.segment(path, ", ".join(CLASSES))  # back to a vocabulary embedded before: from the cache
    assert predictor.model.clip.text_forward_count == text_forwards + 1


def test_bad_requests_get_messages(web, tmp_path):
    corrupt = tmp_path / "photo.jpg"
    Image.fromarray(_scene()).save(corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:300])  # truncated
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    big = tmp_path / "big.png"
    Image.fromarray(np.zeros((300, 200, 3), np.uint8)).save(big)
    good = tmp_path / "good.png"
    Image.fromarray(_scene()).save(good)
    for path, classes, message in [(str(corrupt), "sky", "photo.jpg` cannot be read as an image"),
                                   (str(text), "sky", "notes.png` cannot be read as an image"),
                                   (str(big), "sky", r"too large \(200x300, 0.1 megapixels"),
                                   (None, "sky", "No image"),
                                   (str(good), " ,\n ", "The vocabulary is empty")]:
        answer = web.segment(path, classes)
        assert answer.overlay is None and answer.label_path is None and answer.status.startswith("**Error:**")
        assert re.search(message, answer.status), answer.status
        assert str(tmp_path) not in answer.status  # no server path, no trace


def test_starts_without_a_trained_model(weights, tmp_path, monkeypatch):
    monkeypatch.setenv("OVSS_D2_CACHE", str(tmp_path / "empty_cache"))  # no tiny CLIP trained there
    cfg = app_cfg()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # no quickstart model, and no tiny CLIP: random weights and a note
        predictor, used, note = app.load_predictor(cfg, "", str(tmp_path / "missing.pth"))
        assert used == "" and "No trained model" in note and "make quickstart" in note
        assert "random CLIP weights" in note and "MODEL.CLIP.PRETRAINED" in note
        # a quickstart model that fits the config is loaded, one of another method is not
        predictor, used, note = app.load_predictor(app_cfg(), "", weights)
        assert used == weights and note == ""
        err_seg = load_config(os.path.join(REPO, "configs", "toy", "err_seg_toy.yaml"))
        predictor, used, note = app.load_predictor(err_seg, "", weights)
        assert used == "" and f"the quickstart model `{weights}` does not fit this config" in note
        assert "No trained model" in note and predictor.cfg.MODEL.META_ARCHITECTURE == "ERRSeg"
    # explicit weights must load
    with pytest.raises(FileNotFoundError, match="not found"):
        app.load_predictor(cfg, str(tmp_path / "typo.pth"))


def test_bad_weights_end_the_app_with_one_line(tmp_path, capsys):
    _require(importlib.util.find_spec("gradio") is not None, "no gradio (make setup installs it)")
    assert app.main(["--config-file", CONFIG, "--weights", str(tmp_path / "typo.pth"),
                     "--port", str(browser_tools.free_port())]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("demo/app.py: Weights") and "typo.pth" in err and "\n" not in err


# ---- issue 28: requests and arguments the page must answer with one line ---------------------------------
def _png_header(path, width, height):
    """A PNG whose header declares ``width`` x ``height`` (a few bytes of pixel data follow): what
    a decompression bomb looks like before it is decoded."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_refused_with_its_real_size(web, tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_header(bomb, 40000, 40000)  # 1.6 gigapixels: over Pillow's own limit too
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)
    for status in (web.segment(str(bomb), "sky").status, web.preview(str(bomb))[1]):
        assert status.startswith("**Error:** `bomb.png` is too large (40000x40000, 1600.0 megapixels; this page "
                                 "takes up to 0.05)"), status
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's limit is back for everything else


def test_dataset_without_a_name_and_too_many_classes_are_messages(web, tmp_path):
    good = tmp_path / "good.png"
    Image.fromarray(_scene()).save(good)
    status = web.segment(str(good), "dataset:").status
    assert status.startswith("**Error:** dataset: names no dataset: write dataset:NAME"), status
    many = "\n".join(f"class {i}" for i in range(65536))
    status = web.segment(str(good), many).status
    assert status.startswith("**Error:** 65,536 classes do not fit a 16-bit label map (at most 65,535)"), status


def test_result_files_are_capped_oldest_first(predictor, tmp_path):
    """Each request writes an overlay and a label map the page serves; only the last
    ``keep_results`` requests' stay on disk."""
    web = app.WebDemo(predictor, title="test", max_pixels=MAX_MEGAPIXELS * 1e6, workdir=str(tmp_path / "results"),
                      keep_results=2)
    os.makedirs(web.workdir)
    path = tmp_path / "scene.png"
    Image.fromarray(_scene()).save(path)
    answers = [web.segment(str(path), "grass, sky") for _ in range(4)]
    kept = sorted(os.listdir(web.workdir))
    assert len(kept) == 2
    for i, answer in enumerate(answers):
        overlay, _, _, label, _ = answer.outputs()
        assert os.path.isfile(label) == os.path.isfile(overlay) == (i >= 2), i
        assert os.path.dirname(label) == os.path.dirname(overlay) == answer.label_path.rsplit(os.sep, 1)[0]
    overlay, *_ = answers[-1].outputs()
    assert np.array_equal(np.asarray(Image.open(overlay)), answers[-1].overlay)
    assert sorted(os.path.basename(os.path.dirname(a.label_path)) for a in answers[2:]) == kept


@pytest.mark.parametrize("flags, words", [
    (["--max-size", "0"], "--max-size must be a whole number of pixels, at least 32; got 0"),
    (["--max-size", "1"], "--max-size must be a whole number of pixels, at least 32; got 1"),
    (["--keep-results", "0"], "--keep-results must be positive; got 0"),
    (["--max-megapixels", "-1"], "--max-megapixels must be positive; got -1.0"),
])
def test_bad_app_arguments_end_it_with_one_line(flags, words, capsys):
    assert app.main(["--config-file", CONFIG, "--port", str(browser_tools.free_port()), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"demo/app.py: {words}") and "\n" not in err, err


def test_a_busy_port_ends_the_app_with_one_line(capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert app.main(["--config-file", CONFIG, "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"demo/app.py: cannot serve on 127.0.0.1:{port} (Address already in use): stop the program "
                          "using it, or pass another --port") and "\n" not in err, err


# ---- the page in a real browser -------------------------------------------------------------------------
def _require(ok: bool, reason: str) -> None:
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"{reason}: CI runs the browser tests (.ci/run installs what they need)")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def browser_available():
    _require(browser_tools.chromium_path() is not None, "no Chromium (apt-get install -y chromium)")
    for module in ("gradio", "playwright"):
        _require(importlib.util.find_spec(module) is not None, f"no {module} (make setup installs it)")


@pytest.fixture(scope="module")
def page(browser_available, weights, tmp_path_factory):
    from playwright.sync_api import sync_playwright

    log = str(tmp_path_factory.mktemp("web_app") / "app.log")
    port = browser_tools.free_port()
    proc = browser_tools.start_app(["--config-file", CONFIG, "--weights", weights,
                                    "--max-megapixels", str(MAX_MEGAPIXELS), "--max-upload-mb", str(MAX_UPLOAD_MB),
                                    "--opts", *OPTS], port, log)
    try:
        with sync_playwright() as pw:
            browser = browser_tools.launch_browser(pw)
            yield browser_tools.open_page(browser, port)
            browser.close()
    finally:
        browser_tools.stop_app(proc)


def _download_label(page, tmp_path) -> np.ndarray:
    with page.expect_download() as download:
        page.click("#label-map a[download]")
    path = str(tmp_path / download.value.suggested_filename)
    download.value.save_as(path)
    return np.asarray(Image.open(path))


def _check_results(page, predictor, image, classes, tmp_path):
    """Legend, table and label map of the page against Predictor.predict on the same input."""
    expected = predictor.predict(image, classes)
    fractions = expected.fractions()  # the classes present, largest first
    page.wait_for_selector("#overlay img")
    assert page.locator("#legend .legend-name").all_inner_texts() == list(fractions)
    rows = [row.locator("td").all_inner_texts() for row in page.locator("#shares tbody tr").all()]
    counts = np.bincount(expected.label.reshape(-1), minlength=len(classes))
    assert [(n, int(c)) for n, c, _ in rows] == [(n, int(counts[classes.index(n)])) for n in fractions]
    label = _download_label(page, tmp_path)
    assert label.shape == image.shape[:2] and np.array_equal(label, expected.label)


def test_upload_type_classes_segment_download(page, predictor, tmp_path):
    assert "SED" in page.inner_text("#model") and "sed_toy.yaml" in page.inner_text("#model")
    image = _scene(seed=1)
    Image.fromarray(image).save(tmp_path / "my photo.png")
    assert browser_tools.upload(page, str(tmp_path / "my photo.png")) == ""
    page.wait_for_selector("#preview img")
    page.fill("#classes textarea", ", ".join(CLASSES))
    status = browser_tools.run_segmentation(page)
    assert status.startswith("Done:") and "90x72" in status, status
    _check_results(page, predictor, image, CLASSES, tmp_path)


def test_toyworld_example_with_the_default_vocabulary(page, predictor, tmp_path):
    from ovss_d2.toyworld import render_scene

    vocabulary = app.default_vocabulary(app_cfg())
    page.fill("#classes textarea", ", ".join(vocabulary))
    assert browser_tools.pick_example(page, 1) == ""
    assert "toyworld_val_000001" in page.inner_text("#upload")
    assert browser_tools.run_segmentation(page).startswith("Done:")
    _check_results(page, predictor, render_scene("val", 1)["image"], vocabulary, tmp_path)


def test_messages_for_bad_input(page, tmp_path):
    Image.fromarray(_scene(seed=2)).save(tmp_path / "fine.png")
    assert browser_tools.upload(page, str(tmp_path / "fine.png")) == ""
    page.fill("#classes textarea", "  ")
    status = browser_tools.run_segmentation(page)
    assert status.startswith("Error:") and "The vocabulary is empty" in status, status
    assert page.locator("#overlay img").count() == 0

    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    assert "broken.png cannot be read as an image" in browser_tools.upload(page, str(corrupt))
    page.fill("#classes textarea", "sky, grass")
    status = browser_tools.run_segmentation(page)
    assert status.startswith("Error:") and "broken.png cannot be read as an image" in status, status
    assert "Traceback" not in page.content()

    Image.fromarray(np.zeros((260, 240, 3), np.uint8)).save(tmp_path / "huge.png")
    status = browser_tools.upload(page, str(tmp_path / "huge.png"))
    assert "huge.png is too large (240x260" in status and "--max-megapixels" in status, status

    noise = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)  # ~120 kB as PNG
    Image.fromarray(noise).save(tmp_path / "heavy.png")
    assert os.path.getsize(tmp_path / "heavy.png") > MAX_UPLOAD_MB * 2**20
    page.locator("#upload button[aria-label='Clear']").click()
    page.set_input_files("#upload input[type=file]", str(tmp_path / "heavy.png"))  # refused by Gradio itself
    page.wait_for_selector("text=exceed the maximum allowed size")
