import logging
import socket
import warnings

import open_clip
import pytest
import torch
from safetensors.torch import save_file

import helpers  # noqa: F401  (imports ovss_d2, registers the tiny model configs)
from helpers import log_records
from ovss_d2.modeling.clip import CLIPWeightsUnavailable, CLIPWrapper


@pytest.fixture(scope="module")
def reference_model():
    torch.manual_seed(0)
    return open_clip.create_model("ovss-tiny-vit").eval()


def _same_weights(a: torch.nn.Module, b: torch.nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k].float(), sb[k].float()), k


@pytest.fixture()
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_random_weights_never_touch_network(no_network):
    clip = CLIPWrapper("ovss-tiny-vit", "none")
    assert clip.kind == "vit" and clip.embed_dim == 64


def test_building_without_open_clips_weights_logs_only_our_line(tmp_path, reference_model):
    """open_clip ("Model initialized randomly", root logger) and timm ("No pretrained configuration
    specified", for the tiny trunk) are built without weights on purpose: our line says which."""
    path = tmp_path / "w.pt"
    torch.save(reference_model.state_dict(), path)
    with log_records("") as root, log_records("timm") as timm, log_records("ovss_d2") as ours:
        CLIPWrapper("ovss-tiny-convnext", "none")
        CLIPWrapper("ovss-tiny-vit", str(path))
    theirs = [r.getMessage() for r in root + timm if r.levelno >= logging.WARNING]
    assert not theirs, theirs
    assert [r.getMessage() for r in ours] == [
        "CLIP ovss-tiny-convnext built with random weights (MODEL.CLIP.PRETRAINED=none)",
        f"Loaded CLIP ovss-tiny-vit weights from {path}"]


@pytest.mark.parametrize("layout", ["open_clip_plain", "open_clip_training", "safetensors", "openai_jit",
                                    "openai_state_dict"])
def test_local_checkpoint_layouts_load_identical_weights(tmp_path, reference_model, layout, no_network):
    sd = reference_model.state_dict()
    if layout == "open_clip_plain":
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(sd, path)
    elif layout == "open_clip_training":
        path = tmp_path / "epoch_32.pt"
        torch.save({"epoch": 32, "name": "run", "state_dict": {f"module.{k}": v for k, v in sd.items()},
                    "optimizer": {}}, path)
    elif layout == "safetensors":
        path = tmp_path / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    elif layout == "openai_jit":  # like OpenAI's ViT-B-16.pt: a TorchScript archive in fp16
        path = tmp_path / "ViT-tiny.pt"
        half = open_clip.create_model("ovss-tiny-vit", force_quick_gelu=True)
        half.load_state_dict(sd)
        with warnings.catch_warnings():  # TorchScript is how such a file is made; torch deprecates it
            warnings.filterwarnings("ignore", r"`torch\.jit\.(script|save)` is deprecated", FutureWarning)
            torch.jit.save(torch.jit.script(half.half().eval()), str(path))
    else:  # OpenAI key layout saved with torch.save, with its extra entries, fp16
        path = tmp_path / "openai_state_dict.pt"
        extra = {"input_resolution": torch.tensor(64), "context_length": torch.tensor(16),
                 "vocab_size": torch.tensor(49408)}
        torch.save({**{k: v.half() for k, v in sd.items()}, **extra}, path)
    clip = CLIPWrapper("ovss-tiny-vit", str(path))
    expected = reference_model
    if layout.startswith("openai"):  # stored in fp16: compare with the fp16-rounded weights
        expected = open_clip.create_model("ovss-tiny-vit", force_quick_gelu=True)
        expected.load_state_dict({k: v.half().float() for k, v in sd.items()})
        assert clip.quick_gelu, "OpenAI checkpoints need QuickGELU"
    _same_weights(clip.model, expected)
    # and the same function
    tokens = clip.tokenize(["a photo of a cat"])
    with torch.no_grad():
        assert torch.allclose(clip.model.encode_text(tokens), expected.encode_text(tokens), atol=1e-5)


def test_pretrained_through_config(tmp_path, reference_model):
    from helpers import tiny_cfg

    path = tmp_path / "w.pt"
    torch.save(reference_model.state_dict(), path)
    cfg = tiny_cfg(str(tmp_path))
    cfg.MODEL.CLIP.PRETRAINED = str(path)
    _same_weights(CLIPWrapper.from_config(cfg).model, reference_model)


def test_missing_local_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file"):
        CLIPWrapper("ovss-tiny-vit", str(tmp_path / "missing" / "ViT-B-16.pt"))


def test_unknown_tag_and_model_are_clear_errors():
    with pytest.raises(ValueError, match="neither an existing file nor an open_clip tag"):
        CLIPWrapper("ovss-tiny-vit", "no_such_tag")
    with pytest.raises(ValueError, match="not an open_clip model"):
        CLIPWrapper("no-such-model", "none")


def test_uncached_tag_fails_fast_and_says_how_to_pass_a_file(tmp_path, no_network):
    import time

    start = time.time()
    with pytest.raises(CLIPWeightsUnavailable, match="MODEL.CLIP.PRETRAINED /path/to"):
        CLIPWrapper("ViT-B-16", "openai", cache_dir=str(tmp_path))
    assert time.time() - start < 60


def test_cached_tag_files_are_found_without_network(tmp_path, no_network):
    from ovss_d2.modeling.clip.weights import _cached_tag_file

    cfg = {"url": "https://example.invalid/abc/ViT-B-16.pt", "hf_hub": ""}
    assert _cached_tag_file(cfg, str(tmp_path)) is None
    (tmp_path / "ViT-B-16.pt").write_bytes(b"x")
    assert _cached_tag_file(cfg, str(tmp_path)) == str(tmp_path / "ViT-B-16.pt")


def test_vit_dense_features_any_size():
    clip = CLIPWrapper("ovss-tiny-vit", "none").eval()
    x = torch.randn(2, 3, 40, 72)  # not the 64x64 training size: position embeddings interpolated
    feats = clip.forward_features(x)
    assert feats["res4"].shape == (2, 64, 5, 9)
    assert feats["cls"].shape == (2, 64)
    assert clip.dense_embedding(feats).shape == (2, 64, 5, 9)
    # at the native size, the global embedding is open_clip's own
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(clip.encode_image(x), clip.model.encode_image(x), atol=1e-5)


def test_convnext_dense_features_strides():
    clip = CLIPWrapper("ovss-tiny-convnext", "none").eval()
    x = torch.randn(1, 3, 64, 96)
    feats = clip.forward_features(x)
    for name, stride, dim in zip(["res2", "res3", "res4", "res5"], [4, 8, 16, 32], clip.stage_dims):
        assert feats[name].shape == (1, dim, 64 // stride, 96 // stride)
    dense = clip.dense_embedding(feats)
    assert dense.shape == (1, 64, 2, 3)
    # the stage features are the ones open_clip's own global embedding is computed from
    with torch.no_grad():
        pooled = clip.model.visual(x)
        trunk = clip.model.visual.trunk
        manual = clip.model.visual.head(trunk.head.norm(trunk.head.global_pool(feats["res5"])).flatten(1))
    assert torch.allclose(pooled, manual, atol=1e-5)


def test_text_fingerprint_follows_weights():
    clip = CLIPWrapper("ovss-tiny-vit", "none")
    f1 = clip.text_fingerprint()
    assert clip.text_fingerprint() == f1
    with torch.no_grad():
        clip.model.ln_final.weight.add_(1.0)
    assert clip.text_fingerprint() != f1
    with torch.no_grad():
        clip.model.visual.ln_post.weight.add_(1.0)  # image weights do not change text embeddings
    f2 = clip.text_fingerprint()
    assert clip.text_fingerprint() == f2


def test_normalisation_is_the_configured_one_or_clips_own(tmp_path):
    from helpers import tiny_cfg

    clip = CLIPWrapper("ovss-tiny-convnext", "none")
    assert clip.pixel_mean == pytest.approx([255 * m for m in open_clip.OPENAI_DATASET_MEAN])
    assert clip.pixel_std == pytest.approx([255 * s for s in open_clip.OPENAI_DATASET_STD])
    cfg = tiny_cfg(str(tmp_path), clip="ovss-tiny-convnext")
    cfg.MODEL.CLIP.PIXEL_MEAN = [123.675, 116.28, 103.53]  # ERR-Seg's configs: ImageNet's
    cfg.MODEL.CLIP.PIXEL_STD = [58.395, 57.12, 57.375]
    clip = CLIPWrapper.from_config(cfg)
    assert clip.pixel_mean == [123.675, 116.28, 103.53] and clip.pixel_std == [58.395, 57.12, 57.375]
    with pytest.raises(ValueError, match="MODEL.CLIP.PIXEL_STD must hold 3 values"):
        CLIPWrapper("ovss-tiny-convnext", "none", pixel_std=[1.0, 2.0])


def test_image_tower_drop_path_and_head_dropout_are_set_by_config():
    def stochastic(clip):
        visual = clip.model.visual
        return (sorted(m.drop_prob for m in visual.modules() if type(m).__name__ == "DropPath"),
                [m.p for m in visual.head.modules() if isinstance(m, torch.nn.Dropout)])

    assert stochastic(CLIPWrapper("ovss-tiny-convnext", "none")) == ([], [0.0])  # the config's: none
    drops, head = stochastic(CLIPWrapper("ovss-tiny-convnext", "none", drop_path=0.2, head_dropout=0.3))
    assert drops and max(drops) == pytest.approx(0.2) and head == [0.3]  # timm: linear up to the rate
    with pytest.raises(ValueError, match="timm image towers"):
        CLIPWrapper("ovss-tiny-vit", "none", drop_path=0.1)


@pytest.mark.parametrize("name", ["ovss-tiny-vit", "ovss-tiny-convnext"])
def test_text_embeddings_with_the_context_cut_equal_open_clips(name):
    """encode_text runs the causal text transformer only up to the longest prompt's end token."""
    torch.manual_seed(0)
    clip = CLIPWrapper(name, "none")
    tokens = clip.tokenize(["a cat", "a photo of a very large and rather unusual dog in the scene", "x " * 40])
    assert tokens.argmax(-1).max() == tokens.shape[1] - 1  # the long one fills the context
    assert torch.allclose(clip.encode_text(tokens), clip.model.encode_text(tokens), atol=1e-5)
    short = tokens[:2]
    ours, theirs = clip.encode_text(short), clip.model.encode_text(short)
    assert torch.allclose(ours, theirs, atol=1e-5)
    g_ours = torch.autograd.grad(ours.square().sum(), clip.model.token_embedding.weight)[0]
    g_theirs = torch.autograd.grad(theirs.square().sum(), clip.model.token_embedding.weight)[0]
    assert torch.allclose(g_ours, g_theirs, rtol=1e-4, atol=1e-5 * g_theirs.abs().max().item())
