"""The Predictor as a user calls it: the inputs a user passes, vocabulary mistakes, the device
fallback, and trained weights used without the CLIP file they were initialised from."""
import os
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import REPO
from ovss_d2.checkpoint import OVSSCheckpointer
from ovss_d2.engine import OVSSTrainer, load_config, skip_initial_clip_weights
from ovss_d2.predictor import Predictor
from ovss_d2.utils import DuplicateClassWarning

CONFIG = os.path.join(REPO, "configs", "toy", "sed_toy.yaml")
SMALL = ["MODEL.SED.CLIP_RESOLUTION", "(64, 64)"]
RANDOM_CLIP = ["MODEL.CLIP.PRETRAINED", "none"] + SMALL
VOCAB = ["sky", "grass", "water"]


def _rgb(h, w, seed):
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A checkpoint of the config's model (random weights stand in for trained ones) and the
    CLIP file its CLIP was "initialised from" (another random CLIP, in open_clip's layout)."""
    out = tmp_path_factory.mktemp("trained")
    torch.manual_seed(3)
    model = OVSSTrainer.build_model(load_config(CONFIG, RANDOM_CLIP + ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]))
    OVSSCheckpointer(model, save_dir=str(out)).save("model_final")
    torch.manual_seed(4)
    other = OVSSTrainer.build_model(load_config(CONFIG, RANDOM_CLIP + ["DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]))
    torch.save({"state_dict": other.clip.model.state_dict()}, out / "clip_init.pt")
    return str(out / "model_final.pth"), str(out / "clip_init.pt")


@pytest.fixture(scope="module")
def predictor(trained):
    return Predictor(CONFIG, trained[0], opts=RANDOM_CLIP, max_size=128)


# ---- item 3: what a user passes as an image --------------------------------------------------------
def test_every_common_image_type_gives_the_same_result(predictor, tmp_path):
    rgb = _rgb(37, 51, 0)
    Image.fromarray(rgb).save(tmp_path / "im.png")
    reference = predictor.predict(rgb, VOCAB)
    same = [str(tmp_path / "im.png"), pathlib.Path(tmp_path / "im.png"), Image.fromarray(rgb),
            Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 9, np.uint8)])),  # RGBA
            torch.from_numpy(rgb), torch.from_numpy(rgb).permute(2, 0, 1),  # HWC and torchvision's CHW
            np.asfortranarray(rgb)]
    for image in same:
        pred = predictor.predict(image)
        assert torch.equal(pred.scores, reference.scores) and np.array_equal(pred.label, reference.label), type(image)
    grey = rgb[..., 0]
    by_pil = predictor.predict(Image.fromarray(grey))
    assert np.array_equal(by_pil.label, predictor.predict(np.repeat(grey[..., None], 3, 2)).label)
    assert predictor.predict(torch.from_numpy(grey)).label.shape == grey.shape


@pytest.mark.parametrize("bad, error, words", [
    (np.zeros((8, 8, 3), np.float32), ValueError, "uint8"),
    (torch.zeros(8, 8, 3), ValueError, "uint8"),
    (np.zeros((8, 8, 5), np.uint8), ValueError, "(H, W, 3)"),
    ([[1, 2], [3, 4]], TypeError, "PIL image"),
    (None, TypeError, "file path"),
])
def test_other_inputs_say_what_was_expected(predictor, bad, error, words):
    with pytest.raises(error) as info:
        predictor.predict(bad, VOCAB)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_a_missing_image_file_names_it(predictor, tmp_path):
    with pytest.raises(OSError, match="no_such.png"):
        predictor.predict(tmp_path / "no_such.png", VOCAB)


# ---- item 2: vocabulary mistakes -------------------------------------------------------------------
def test_a_string_vocabulary_is_refused_with_the_list_it_meant(predictor):
    with pytest.raises(TypeError, match=r"\['grass', 'sky'\]"):
        predictor.predict(_rgb(20, 20, 1), "grass,sky")
    with pytest.raises(ValueError, match="empty"):
        predictor.predict(_rgb(20, 20, 1), [])


def test_duplicate_names_warn_and_keep_the_first_id(predictor):
    image = _rgb(40, 40, 2)
    plain = predictor.predict(image, ["sky", "grass"])
    with pytest.warns(DuplicateClassWarning, match="'sky' at positions 0, 2"):
        dup = predictor.predict(image, ["sky", "grass", "Sky "])
    # SED's classes attend to each other: the repeated class is segmented once, as without it
    assert np.array_equal(dup.label, plain.label) and dup.fractions() == plain.fractions()
    assert torch.equal(dup.scores[2], dup.scores[0]) and torch.equal(dup.scores[:2], plain.scores)


# ---- item 4: --device cuda without a GPU -----------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_device_falls_back_to_the_cpu(trained, predictor):
    p = Predictor(CONFIG, trained[0], opts=RANDOM_CLIP, device="cuda", max_size=128)
    assert p.device.type == "cpu" and p.cfg.MODEL.DEVICE == "cpu"
    image = _rgb(30, 30, 3)
    assert torch.equal(p.predict(image, VOCAB).scores, predictor.predict(image, VOCAB).scores)


def test_an_unknown_device_is_a_clear_error(trained):
    with pytest.raises(ValueError, match="MODEL.DEVICE 'gpu' is not a device"):
        Predictor(CONFIG, trained[0], opts=RANDOM_CLIP, device="gpu")


# ---- item 5: trained weights without the initial CLIP weights --------------------------------------
def test_weights_need_no_initial_clip_file(trained, monkeypatch, tmp_path):
    """The checkpoint holds the whole model: with the CLIP file present, deleted, or named by the
    config's ``toyworld`` (not cached here), the outputs are byte-identical to MODEL.CLIP.PRETRAINED
    none."""
    weights, clip_file = trained
    copy = tmp_path / "clip_init.pt"
    copy.write_bytes(open(clip_file, "rb").read())
    image = _rgb(45, 60, 5)

    def scores(opts):
        return Predictor(CONFIG, weights, opts=opts + SMALL, max_size=128).predict(image, VOCAB).scores

    reference = scores(["MODEL.CLIP.PRETRAINED", "none"])
    assert torch.equal(scores(["MODEL.CLIP.PRETRAINED", str(copy)]), reference)  # file present: read, overwritten
    os.remove(copy)
    assert torch.equal(scores(["MODEL.CLIP.PRETRAINED", str(copy)]), reference)  # file gone
    monkeypatch.setenv("OVSS_D2_CACHE", str(tmp_path / "empty_cache"))
    assert load_config(CONFIG).MODEL.CLIP.PRETRAINED == "toyworld"
    assert torch.equal(scores([]), reference)  # the config's toyworld CLIP, not cached
    # without weights the CLIP file is needed, and says so
    with pytest.raises(FileNotFoundError, match="toyworld"):
        Predictor(CONFIG, "", opts=SMALL)


def test_open_clip_tag_keeps_its_quick_gelu_and_opt_out_keeps_the_clip_weights():
    cfg = load_config("", ["MODEL.CLIP.NAME", "ViT-B-16", "MODEL.CLIP.PRETRAINED", "openai"])
    skip_initial_clip_weights(cfg, "model_final.pth")
    assert cfg.MODEL.CLIP.PRETRAINED == "none" and cfg.MODEL.CLIP.QUICK_GELU  # OpenAI's CLIP uses QuickGELU
    cfg = load_config("", ["MODEL.CLIP.PRETRAINED", "openai", "MODEL.WEIGHTS_STRICT", "False"])
    skip_initial_clip_weights(cfg, "model_final.pth")
    assert cfg.MODEL.CLIP.PRETRAINED == "openai"  # a partial checkpoint: CLIP still comes from the tag
    cfg = load_config("", ["MODEL.CLIP.PRETRAINED", "openai"])
    skip_initial_clip_weights(cfg, "")
    assert cfg.MODEL.CLIP.PRETRAINED == "openai"


# ---- issue 28: sizes that give every pixel one class, images without pixels, empty batches -----------
@pytest.mark.parametrize("kwargs, name, value", [
    ({"max_size": 0}, "max_size", "0"), ({"max_size": -5}, "max_size", "-5"), ({"max_size": 1}, "max_size", "1"),
    ({"max_size": 31}, "max_size", "31"), ({"max_size": 512.5}, "max_size", "512.5"),
    ({"mode": "slide", "window": 0}, "window", "0"),
])
def test_sizes_below_one_feature_cell_are_refused(trained, kwargs, name, value):
    with pytest.raises(ValueError, match=rf"^{name} must be a whole number of pixels, at least 32; got {value} "):
        Predictor(CONFIG, trained[0], opts=RANDOM_CLIP, **kwargs)


def test_sizes_changed_after_construction_are_checked(predictor):
    predictor.window = 0
    try:
        with pytest.raises(ValueError, match="window must be a whole number of pixels, at least 32; got 0"):
            predictor.predict(_rgb(40, 40, 1), VOCAB)
    finally:
        predictor.window = 512


@pytest.mark.parametrize("empty", [
    np.zeros((0, 12, 3), np.uint8), np.zeros((12, 0, 3), np.uint8), Image.new("RGB", (0, 7)),
    torch.zeros(3, 0, 5, dtype=torch.uint8), np.zeros((0, 0), np.uint8),
])
def test_an_image_without_pixels_is_refused(predictor, empty):
    with pytest.raises(ValueError, match=r"Expected an image with pixels; got one of size \d+x\d+"):
        predictor.predict(empty, VOCAB)


def test_an_empty_batch_gives_an_empty_list(predictor):
    assert predictor.predict_batch([], VOCAB) == []
    assert predictor.predict_batch(()) == [] and predictor.class_names == VOCAB
    batch = predictor.predict_batch([_rgb(30, 40, 5)])  # and the next batch runs as before
    assert np.array_equal(batch[0].label, predictor.predict(_rgb(30, 40, 5)).label)


def test_other_argument_mistakes_name_the_fix(trained):
    with pytest.raises(ValueError, match="mode must be 'resize' or 'slide', got 'tiles'"):
        Predictor(CONFIG, trained[0], opts=RANDOM_CLIP, mode="tiles")
    with pytest.raises(ValueError, match=r"Prompt template 'a photo of a \{\{\}\}\.' must contain exactly one '\{\}'"):
        Predictor(CONFIG, trained[0], opts=RANDOM_CLIP, templates=["a photo of a {{}}."])
    fresh = Predictor(CONFIG, trained[0], opts=RANDOM_CLIP, max_size=64)
    with pytest.raises(ValueError, match=r"No vocabulary: pass one to predict\(\) or call set_vocabulary\(\)"):
        fresh.predict(_rgb(20, 20, 0))
    with pytest.raises(TypeError, match=r"predict_batch\(\) takes a list of images; use predict\(\) for one image"):
        fresh.predict_batch(_rgb(20, 20, 0), VOCAB)


def test_slide_mode_averages_its_windows_with_the_whole_image(predictor, monkeypatch):
    """Slide mode, hand-computed: with window 32 on a 48 x 80 image, windows start every
    ceil(32 * 2 / 3) = 22 px (rows 0, 16; columns 0, 22, 44, 48). A stand-in model scores every pixel
    of its input with the input's width, so a pixel's score is the mean over its windows (32) averaged
    with the whole image's (80): (32 + 80) / 2 everywhere; and the number of model calls is the
    2 x 4 windows plus the whole image."""
    calls = []

    def run(tensors):
        calls.append(tuple(tensors[0].shape[-2:]))
        return [torch.full((2, *t.shape[-2:]), float(t.shape[-1])) for t in tensors]

    monkeypatch.setattr(predictor, "_run", run)
    monkeypatch.setattr(predictor, "window", 32)
    scores = predictor._slide(torch.zeros(3, 48, 80))
    assert scores.shape == (2, 48, 80) and torch.all(scores == (32 + 80) / 2)
    assert sorted(calls) == sorted([(32, 32)] * 8 + [(48, 80)])
