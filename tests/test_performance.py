"""The speed switches (ovss_d2/modeling/fast_paths.py; the class chunks:
cost_aggregation/class_chunks.py): each one's output against the plain fp32 path of the same
weights, with the tolerance stated in the test; the host-synchronisation counts of the inference
forwards; the switches' config plumbing and fallbacks."""
import logging
import os

import pytest
import torch
import torch.nn as nn

from helpers import REPO
from ovss_d2.engine import OVSSTrainer, load_config
from ovss_d2.modeling import fast_paths as fp
from ovss_d2.modeling.cost_aggregation import REJECTED_LOGIT, chunked_over_classes
from ovss_d2.utils.profiling import HostSyncCounter

NAMES = [f"class {i}" for i in range(10)]


def build(method: str, extra=(), seed: int = 0):
    """A tiny random-weight SED / ERR-Seg (ToyWorld configs at 64 x 64) in eval mode."""
    config, res_key = {"sed": ("sed_toy.yaml", "MODEL.SED.CLIP_RESOLUTION"),
                       "err_seg": ("err_seg_toy.yaml", "MODEL.ERR_SEG.TEST_RESOLUTION")}[method]
    cfg = load_config(os.path.join(REPO, "configs", "toy", config), [
        "MODEL.CLIP.PRETRAINED", "none", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", "MODEL.TEXT.CACHE_DIR", "none",
        res_key, "(64, 64)", *extra])
    torch.manual_seed(seed)
    model = OVSSTrainer.build_model(cfg).eval()
    model.set_vocabulary(NAMES)
    model.class_embeddings()  # the text encoder runs here, once per vocabulary, not in the forwards
    return model


def rejection_off(model):
    setattr(model, "early_rejection_topk" if hasattr(model, "early_rejection_topk") else "crm_test", 0)
    return model


def inputs(n=1, h=45, w=61):
    g = torch.Generator().manual_seed(1)
    return [{"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g), "height": h, "width": w}
            for _ in range(n)]


def probs(model, batch):
    with torch.no_grad():
        return torch.stack([o["sem_seg"] for o in model(batch)])


def twin(model, method, extra):
    """A model built with the switches ``extra`` and the weights of ``model``."""
    other = build(method, extra, seed=1)
    other.load_state_dict(model.state_dict())
    other.early_rejection_topk = getattr(model, "early_rejection_topk", None)
    other.crm_test = getattr(model, "crm_test", None)
    return other


# ---- autocast -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["sed", "err_seg"])
def test_bf16_autocast_inference_matches_fp32(method):
    """Tolerance: bf16 keeps 8 mantissa bits (relative step 2^-8 = 0.4%); through the random tiny
    networks the class probabilities stay within 0.03 of fp32 (mean difference below 0.003)."""
    model = rejection_off(build(method))
    batch = inputs()
    plain = probs(model, batch)
    model.fast_paths.amp = True
    with torch.no_grad():
        x = model.resize_to(((batch[0]["image"].float() - model.pixel_mean) / model.pixel_std)[None], (64, 64))
        with model.fast_paths.autocast(x.device):
            logits = model.predict(x)["logits"]
    assert logits.dtype == torch.bfloat16  # the switch really runs the decoder in bf16
    fast = probs(model, batch)
    assert fast.dtype == torch.float32 and fast.shape == plain.shape
    diff = (fast - plain).abs()
    assert diff.max() < 0.03 and diff.mean() < 0.003


def test_autocast_switch_from_config_and_fp16_on_cpu_is_a_clear_error():
    model = build("sed", ["TEST.AMP.ENABLED", "True", "TEST.AMP.DTYPE", "float16"])
    assert model.fast_paths.amp and model.fast_paths.amp_dtype == "float16"
    with pytest.raises(ValueError, match="TEST.AMP.DTYPE bfloat16"):
        probs(model, inputs())
    with pytest.raises(ValueError, match="TEST.AMP.DTYPE"):
        build("sed", ["TEST.AMP.DTYPE", "half"])


def test_bf16_training_losses_match_fp32():
    """Training AMP (SOLVER.AMP, applied by the train loop as here): the losses under bf16
    autocast are within 2% of the fp32 losses."""
    model = build("sed").train()
    model.train_class_names = NAMES[:4]
    batch = inputs(2, 64, 64)
    g = torch.Generator().manual_seed(2)
    for x in batch:
        x["sem_seg"] = torch.randint(0, 4, (64, 64), generator=g)
    torch.manual_seed(3)
    plain = model(batch)
    torch.manual_seed(3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = model(batch)
    assert plain.keys() == fast.keys()
    for k in plain:
        assert abs(fast[k].item() - plain[k].item()) <= 0.02 * abs(plain[k].item()), k


# ---- channels-last ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["sed", "err_seg"])
def test_channels_last_matches_the_plain_path(method):
    """fp32 in another memory order: only the summation order of the convolutions changes;
    tolerance 1e-5 on probabilities. With rejection on (same classes kept) too."""
    model = build(method)
    fast = twin(model, method, ["MODEL.CHANNELS_LAST", "True"])
    conv = next(m for m in fast.modules() if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
    seen = {}
    fast.clip.model.visual.trunk.stages[0].register_forward_hook(lambda m, a, out: seen.setdefault("res2", out))
    batch = inputs()
    for k in (0, 3):
        setattr(model, "early_rejection_topk" if method == "sed" else "crm_test", k)
        setattr(fast, "early_rejection_topk" if method == "sed" else "crm_test", k)
        assert torch.allclose(probs(fast, batch), probs(model, batch), atol=1e-5, rtol=0)
    assert seen["res2"].is_contiguous(memory_format=torch.channels_last) and not seen["res2"].is_contiguous()


# ---- torch.compile ------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["sed", "err_seg"])
def test_compile_switch_compiles_encoder_and_decoder_and_matches(method):
    """MODEL.COMPILE with the "eager" backend (dynamo graph capture, no code generation: inductor
    takes minutes on 2 CPU cores; docs/performance.md has its numbers): the encoder stages and
    decoder layers are compiled in place, the state-dict keys unchanged, the probabilities within
    1e-5 of the plain path with class rejection on (class counts that depend on the data)."""
    torch._dynamo.reset()
    model = build(method)
    fast = twin(model, method, ["MODEL.COMPILE.ENABLED", "True", "MODEL.COMPILE.BACKEND", "eager"])
    compiled = [m for m in fast.modules() if getattr(m, "_compiled_call_impl", None) is not None]
    assert fast.clip.model.visual.trunk.stages[0] in compiled and fast.decoder.layers[0] in compiled
    assert list(fast.state_dict()) == list(model.state_dict())
    for m in (model, fast):
        setattr(m, "early_rejection_topk" if method == "sed" else "crm_test", 3)
    batch = inputs()
    assert torch.allclose(probs(fast, batch), probs(model, batch), atol=1e-5, rtol=0)


def test_compile_falls_back_to_eager_without_a_compiler(monkeypatch, caplog):
    monkeypatch.setattr(fp.shutil, "which", lambda name: None)
    monkeypatch.delenv("CXX", raising=False)
    assert "C++ compiler" in fp.compile_unavailable_reason("inductor", "cpu")
    with caplog.at_level(logging.WARNING, logger="ovss_d2.modeling.fast_paths"):
        model = build("sed", ["MODEL.COMPILE.ENABLED", "True"])
    assert "running eagerly" in caplog.text
    assert not any(getattr(m, "_compiled_call_impl", None) is not None for m in model.modules())
    assert probs(model, inputs()).shape == (1, len(NAMES), 45, 61)


def test_unknown_compile_backend_is_a_config_error():
    with pytest.raises(ValueError, match="MODEL.COMPILE.BACKEND"):
        build("sed", ["MODEL.COMPILE.ENABLED", "True", "MODEL.COMPILE.BACKEND", "no_such_backend"])


# ---- class chunks -------------------------------------------------------------------------------
def test_chunked_over_classes_equals_one_call_per_image_and_class():
    """Rows image-major (B*N); a function that repeats a per-image tensor by rows // B, as the
    decoders do, gives the same result chunked; compared with an explicit loop over (image, class)."""
    b, n = 2, 7
    g = torch.Generator().manual_seed(0)
    x, extra, per_image = (torch.randn(b * n, 3, 5, 5, generator=g), torch.randn(b * n, 2, 5, 5, generator=g),
                           torch.randn(b, 4, 5, 5, generator=g))
    conv = nn.Conv2d(9, 6, 3, padding=1)

    def fn(rows, extra_rows):
        return conv(torch.cat([rows, per_image.repeat_interleave(rows.shape[0] // b, dim=0), extra_rows], 1))

    expected = torch.cat([conv(torch.cat([x[i * n + c], per_image[i], extra[i * n + c]])[None])
                          for i in range(b) for c in range(n)])
    for chunk in (0, 1, 3, 7, 50):
        out = chunked_over_classes(fn, x, n, chunk, extra)
        assert torch.allclose(out, expected, atol=1e-6), chunk
    cl = chunked_over_classes(lambda r, e: fn(r, e).contiguous(memory_format=torch.channels_last), x, n, 3, extra)
    assert cl.is_contiguous(memory_format=torch.channels_last) and torch.allclose(cl, expected, atol=1e-6)


@pytest.mark.parametrize("method", ["sed", "err_seg"])
def test_class_chunks_match_the_plain_path(method):
    """TEST.CLASS_CHUNK_SIZE 3 of 10 classes, two images: within 1e-5, rejection on and off."""
    model = build(method)
    fast = twin(model, method, ["TEST.CLASS_CHUNK_SIZE", "3"])
    assert fast.fast_paths.class_chunk == 3
    batch = inputs(2)
    for k in (0, 4):
        setattr(model, "early_rejection_topk" if method == "sed" else "crm_test", k)
        setattr(fast, "early_rejection_topk" if method == "sed" else "crm_test", k)
        assert torch.allclose(probs(fast, batch), probs(model, batch), atol=1e-5, rtol=0)


def test_all_switches_together_match_within_the_bf16_tolerance():
    model = rejection_off(build("err_seg"))
    fast = twin(model, "err_seg", ["TEST.AMP.ENABLED", "True", "MODEL.CHANNELS_LAST", "True",
                                   "TEST.CLASS_CHUNK_SIZE", "4"])
    diff = (probs(fast, inputs()) - probs(model, inputs())).abs()
    assert diff.max() < 0.03 and diff.mean() < 0.003


# ---- host synchronisation -----------------------------------------------------------------------
def test_sync_counter_sees_the_usual_suspects():
    x = torch.arange(6.0)
    with HostSyncCounter() as c:
        (x > 2).nonzero()
        x[x > 2]
        x.sum().item()
        torch.tensor([0.1, 0.2])
        x.repeat_interleave(2)  # integer repeats: no synchronisation
    assert c.counts == {"aten::nonzero": 1, "aten::index": 1, "aten::_local_scalar_dense": 1,
                        "aten::lift_fresh": 1}


def test_inference_forwards_synchronise_only_where_the_shape_depends_on_data():
    """ERR-Seg (CRM keeps a fixed N): no host synchronisation at all. SED: one per early-rejection
    layer (the kept-class count sets the next layer's shapes), none without rejection."""
    err = build("err_seg")
    err.crm_test = 4
    with torch.no_grad(), HostSyncCounter() as c:
        err(inputs())
    assert c.total == 0, c.counts
    sed = build("sed")
    for k, expected in ((0, {}), (3, {"aten::nonzero": len(sed.decoder.layers)})):
        sed.early_rejection_topk = k
        with torch.no_grad(), HostSyncCounter() as c:
            out = sed(inputs())[0]["sem_seg"]
        assert c.counts == expected
    assert (out == torch.sigmoid(torch.tensor(REJECTED_LOGIT))).any()  # k = 3 really rejected classes


# ---- SED's early rejection: cost guidance computed for the kept classes only --------------------
def _reference_sed_decoder(dec, cost, guidance, topk):
    """SED's decoder with early rejection written out plainly: the whole cost-guidance chain for
    every class first, Python sets for the top-k union, rows picked by index lists."""
    b, _, n = cost.shape[:3]
    x = dec.cost_embed(cost)
    guid = [proj(g) for proj, g in zip(dec.guidance_proj, guidance)]
    c, chain = cost.transpose(1, 2).flatten(0, 1), []
    for proj in dec.cost_guidance_proj:
        c = proj(c)
        chain.append(c)
    kept = list(range(n))
    for i, layer in enumerate(dec.layers):
        scores = dec.aux_heads[i](x).view(b, len(kept), *x.shape[-2:])
        keep = sorted(set(scores.topk(min(topk, len(kept)), dim=1).indices.flatten().tolist()))
        x = x[[j * len(kept) + k for j in range(b) for k in keep]]
        kept = [kept[k] for k in keep]
        cg = chain[i].view(b, n, *chain[i].shape[1:])[:, kept].flatten(0, 1)
        x = layer(x, len(kept), guid[i], cg)
    logits = dec.head(x).view(b, len(kept), *x.shape[-2:])
    full = torch.full((b, n, *x.shape[-2:]), REJECTED_LOGIT)
    full[:, kept] = logits
    return full, kept


@pytest.mark.parametrize("chunk", [0, 2])
def test_sed_rejection_decodes_only_kept_classes_and_matches_the_plain_loop(chunk):
    from ovss_d2.modeling.cost_map import cost_map

    model = build("sed")
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 64, 64, generator=g)
    with torch.no_grad():
        feats = model.clip.forward_features(x)
        cost = cost_map(model.clip.dense_embedding(feats), model.class_embeddings())
        guidance = [feats[k] for k in ("res4", "res3", "res2")]
        expected, kept = _reference_sed_decoder(model.decoder, cost, guidance, topk=1)
        calls = []
        hook = model.decoder.cost_guidance_proj[2].register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
        out = model.decoder(cost, guidance, topk=1, class_chunk=chunk)
        hook.remove()
    assert 0 < len(kept) < len(NAMES) and out["kept"].tolist() == kept
    assert sum(calls) == 2 * len(kept)  # the finest cost guidance: kept classes only, both images
    assert torch.allclose(out["logits"], expected, atol=1e-5, rtol=0)
