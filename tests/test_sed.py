import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY

from helpers import (REPO, assert_official_checkpoint_is_strict, param_counts, random_official_state_dict,
                     register_tiny_splits, train_args, train_worker)
from ovss_d2.checkpoint import OVSSCheckpointer
from ovss_d2.engine import OVSSTrainer, build_optimizer, load_config
from ovss_d2.modeling.converters import convert_sed_official
from ovss_d2.modeling.cost_aggregation import REJECTED_LOGIT, ClassLinearAttention, PooledClassMixer, topk_union
from ovss_d2.modeling.cost_map import cost_map
from ovss_d2.modeling.heads import SEDDecoder
from ovss_d2.modeling.losses import one_hot_bce_with_logits

def sed_cfg(name="convnext_base_w_320", extra=()):
    return load_config(os.path.join(REPO, "configs", "sed", "sed_convnext_b_768.yaml"),
                       ["MODEL.CLIP.NAME", name, "MODEL.CLIP.PRETRAINED", "none", "MODEL.DEVICE", "cpu",
                        "DATASETS.TRAIN", "()", "DATASETS.TEST", "()", *extra])


def tiny_sed_cfg(tmp_path, extra=()):
    return load_config(os.path.join(REPO, "configs", "toy", "sed_toy.yaml"), [
        "MODEL.CLIP.PRETRAINED", "none", "DATASETS.TRAIN", "('tiny_train',)", "DATASETS.TEST", "('tiny_val',)",
        "MODEL.SED.CLIP_RESOLUTION", "(64, 64)", "OUTPUT_DIR", str(tmp_path), *extra])


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("sed_data"))
    register_tiny_splits(root)
    return root


@pytest.fixture(scope="module")
def sed_b():
    return OVSSTrainer.build_model(sed_cfg())


def test_convnext_b_parameter_counts_are_official(sed_b):
    assert param_counts(sed_b) == (180_761_741, 89_598_220)


def test_convnext_l_parameter_counts_are_official_and_its_layout_loads_strictly():
    cfg = load_config(os.path.join(REPO, "configs", "sed", "sed_convnext_l_768.yaml"),
                      ["MODEL.CLIP.PRETRAINED", "none", "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "()",
                       "DATASETS.TEST", "()"])
    model = OVSSTrainer.build_model(cfg)
    assert param_counts(model) == (353_245_773, 201_243_980)
    model.load_state_dict(convert_sed_official(random_official_state_dict("sed_convnext_large.json")), strict=True)
    # the image tower as the authors' open_clip builds ConvNeXt-L: stochastic depth 0.1, head dropout 0.1
    visual = model.clip.model.visual
    assert sum(type(m).__name__ == "DropPath" for m in visual.modules()) == 35
    assert visual.head.mlp.drop1.p == 0.1


def test_convnext_b_image_tower_has_no_stochastic_layers(sed_b):
    """As the authors' open_clip (open_clip 3.3.0's config would add drop path 0.1)."""
    assert not [m for m in sed_b.clip.modules() if type(m).__name__ == "DropPath" or
                (isinstance(m, torch.nn.Dropout) and m.p > 0)]


def test_official_layout_converts_and_loads_strictly(sed_b, tmp_path):
    official = random_official_state_dict("sed_convnext_base.json")  # reads ../shared/reference
    converted = convert_sed_official(official)
    sed_b.load_state_dict(converted, strict=True)
    # spot checks of the mapping
    t = "sem_seg_head.predictor.transformer."
    assert torch.equal(sed_b.decoder.cost_embed.conv.weight, official[t + "conv1.weight"])
    assert torch.equal(sed_b.decoder.layers[2].class_attn.block.q.weight,
                       official["sem_seg_head.predictor.transformer.decoder3.attention.attention.q.weight"])
    assert torch.equal(sed_b.decoder.aux_heads[1].bias, official["sem_seg_head.predictor.transformer.head1.bias"])
    # and the checkpointer converts by itself when it sees that layout
    path = str(tmp_path / "sed_official.pth")
    torch.save({"model": official}, path)
    torch.nn.init.zeros_(sed_b.decoder.head.weight)
    OVSSCheckpointer(sed_b).load(path)
    assert torch.equal(sed_b.decoder.head.weight, official["sem_seg_head.predictor.transformer.head.weight"])


def test_checkpoint_with_an_extra_or_a_missing_tensor_fails_naming_it(sed_b, tmp_path):
    assert_official_checkpoint_is_strict(
        sed_b, "sed_convnext_base.json", tmp_path, "sem_seg_head.predictor.transformer.mystery.weight",
        "sem_seg_head.predictor.transformer.decoder2.cnext.gamma", "decoder.layers.1.spatial.gamma")


@SEM_SEG_HEADS_REGISTRY.register()
class NarrowSEDDecoderForTests(SEDDecoder):
    """Another registered head: SED's decoder with its cost map embedded in 32 channels."""

    @classmethod
    def from_config(cls, cfg, input_shape):
        return {**super().from_config(cfg, input_shape), "hidden_dim": 32}


def test_the_decoder_is_the_registered_head_the_config_names(data_root, tmp_path):
    """MODEL.SEM_SEG_HEAD.NAME swaps the decoder from YAML; left at detectron2's default
    (SemSegFPNHead) it is SED's own."""
    swapped = OVSSTrainer.build_model(tiny_sed_cfg(tmp_path, ["MODEL.SEM_SEG_HEAD.NAME", "NarrowSEDDecoderForTests"]))
    assert type(swapped.decoder) is NarrowSEDDecoderForTests and swapped.decoder.cost_embed.conv.out_channels == 32
    swapped.eval().set_vocabulary(["cat", "dog", "grass"])
    with torch.no_grad():
        assert swapped([{"image": _image(), "height": 37, "width": 53}])[0]["sem_seg"].shape == (3, 37, 53)
    default = OVSSTrainer.build_model(tiny_sed_cfg(tmp_path, ["MODEL.SEM_SEG_HEAD.NAME", "SemSegFPNHead"]))
    assert type(default.decoder) is SEDDecoder


def test_checkpoint_of_the_earlier_ovss_d2_layout_loads(tiny_sed, tmp_path):
    """Before SED and ERR-Seg shared their class mixer and upsampling block, SED's layers held
    ``class_attn.q``, ``up`` and ``fuse.convs``: such checkpoints convert on load."""
    state = {k: v.clone() for k, v in tiny_sed.state_dict().items()}
    early = {k.replace(".class_attn.block.", ".class_attn.").replace(".skip_fusion.up_conv.", ".up.")
             .replace(".skip_fusion.fuse.", ".fuse.convs."): v.clone() + 1 for k, v in state.items()}
    assert len(early) == len(state) and any(".fuse.convs." in k for k in early)
    path = str(tmp_path / "early.pth")
    torch.save({"model": early}, path)
    OVSSCheckpointer(tiny_sed).load(path)
    assert all(torch.equal(v, state[k] + 1) for k, v in tiny_sed.state_dict().items() if v.is_floating_point())


def test_topk_union_matches_a_loop():
    torch.manual_seed(0)
    scores = torch.randn(2, 30, 5, 7)
    for k in (1, 3, 8):
        expected = set()
        for b in range(2):
            for y in range(5):
                for x in range(7):
                    expected |= set(scores[b, :, y, x].argsort(descending=True)[:k].tolist())
        assert topk_union(scores, k).tolist() == sorted(expected)
    assert topk_union(scores, 30).tolist() == list(range(30))


def test_bce_equals_explicit_one_hot():
    """Loss and gradient equal torch's BCE on the one-hot tensor, from tiny to saturated logits
    (ERR-Seg's dropped classes sit at -100), also for float64 (gradcheck) and half precision."""
    torch.manual_seed(0)
    for scale in (0.01, 1.0, 8.0, 60.0):
        logits = (torch.randn(2, 5, 6, 7) * scale).requires_grad_()
        targets = torch.randint(0, 5, (2, 6, 7))
        targets[0, :2] = 255
        onehot = torch.zeros_like(logits)
        valid = targets != 255
        onehot.permute(0, 2, 3, 1)[valid] = F.one_hot(targets[valid], 5).float()
        expected = F.binary_cross_entropy_with_logits(logits, onehot)
        (expected_grad,) = torch.autograd.grad(expected, logits)
        ours = one_hot_bce_with_logits(logits, targets)
        (grad,) = torch.autograd.grad(ours, logits)
        assert abs(ours.item() - expected.item()) <= 1e-6 * max(1.0, expected.item()), scale
        assert torch.allclose(grad, expected_grad, rtol=1e-5, atol=1e-9), scale
    small = torch.randn(1, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: one_hot_bce_with_logits(x, torch.tensor([[[0, 2], [255, 1]]])), small)
    for dtype in (torch.float16, torch.bfloat16):  # computed in float32, the gradient rounded once
        half = logits.detach().to(dtype).requires_grad_()
        loss = one_hot_bce_with_logits(half, targets)
        loss.backward()
        rounded = half.detach().float().requires_grad_()
        F.binary_cross_entropy_with_logits(rounded, onehot).backward()
        assert loss.dtype == torch.float32 and half.grad.dtype == dtype
        assert torch.allclose(half.grad.float(), rounded.grad, rtol=2 ** -7, atol=1e-7), dtype
    assert one_hot_bce_with_logits(torch.zeros(2, 0, 3, 3, requires_grad=True), targets[:, :3, :3]).item() == 0


@pytest.fixture()
def tiny_sed(data_root, tmp_path):
    torch.manual_seed(0)
    model = OVSSTrainer.build_model(tiny_sed_cfg(tmp_path)).eval()
    return model


def _image(h=37, w=53):
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 255, (3, h, w), dtype=torch.uint8, generator=g)


def test_early_rejection_drops_the_classes_no_pixel_ranks_and_decodes_the_rest_alone(tiny_sed):
    """k = 2 of 12 classes: the kept classes are the union of every pixel's two best classes by the
    first auxiliary head (a loop over pixels), and their logits equal those of the model run without
    rejection on a vocabulary of those classes only (in this setting the later layers keep all)."""
    names = [f"class {i}" for i in range(12)]
    tiny_sed.set_vocabulary(names)
    image = _image()
    x = tiny_sed.resize_to(((image.float() - tiny_sed.pixel_mean) / tiny_sed.pixel_std)[None],
                           tiny_sed.clip_resolution)
    dec = tiny_sed.decoder
    with torch.no_grad():
        tiny_sed.early_rejection_topk = 2
        out = tiny_sed.predict(x)
        dense = tiny_sed.clip.dense_embedding(tiny_sed.clip.forward_features(x))
        cost = cost_map(dense, tiny_sed.class_embeddings())
        scores = dec.aux_heads[0](dec.cost_embed(cost))[:, 0]  # (N, h, w), one image
        expected = set()
        for y in range(scores.shape[1]):
            for x_ in range(scores.shape[2]):
                expected |= set(scores[:, y, x_].argsort(descending=True)[:2].tolist())
        kept = sorted(expected)
        assert 0 < len(kept) < 12 and out["kept"].tolist() == kept
        rejected = [c for c in range(12) if c not in kept]
        assert (out["logits"][:, rejected] == REJECTED_LOGIT).all()
        tiny_sed.early_rejection_topk = 0
        tiny_sed.set_vocabulary([names[c] for c in kept])
        alone = tiny_sed.predict(x)["logits"]
        assert torch.allclose(out["logits"][:, kept], alone, atol=1e-5)
        # and k >= N is the plain path
        tiny_sed.set_vocabulary(names)
        plain = tiny_sed.predict(x)["logits"]
        tiny_sed.early_rejection_topk = 12
        assert torch.equal(tiny_sed.predict(x)["logits"], plain)


def test_class_attention_pools_at_the_test_size_at_inference_only():
    """eval.sh evaluates with 1 x 1 pooling, the model trains with 2 x 2."""
    torch.manual_seed(0)
    attn = PooledClassMixer(ClassLinearAttention(16, num_heads=4), pool=(2, 2), test_pool=(1, 1))
    same_weights = {p: PooledClassMixer(ClassLinearAttention(16, num_heads=4), pool=p) for p in ((2, 2), (1, 1))}
    for m in same_weights.values():
        m.load_state_dict(attn.state_dict())
    x = torch.randn(3 * 5, 16, 8, 8)
    attn.train()
    assert torch.equal(attn(x, 5), same_weights[(2, 2)](x, 5))
    attn.eval()
    assert torch.equal(attn(x, 5), same_weights[(1, 1)](x, 5))
    assert not torch.allclose(same_weights[(1, 1)](x, 5), same_weights[(2, 2)](x, 5))


def test_odd_sized_image_gives_map_at_original_size(tiny_sed):
    tiny_sed.set_vocabulary(["cat", "dog, puppy", "grass"])
    with torch.no_grad():
        out = tiny_sed([{"image": _image(), "height": 37, "width": 53}])[0]["sem_seg"]
    assert out.shape == (3, 37, 53) and (out >= 0).all() and (out <= 1).all()


def test_no_gradient_from_skip_fusion_into_encoder(tiny_sed):
    """Gradients of the final logits reach the encoder through the cost map only: the res2-res4
    features handed to the skip-layer fusion get none."""
    tiny_sed.train()
    x = torch.randn(1, 3, 64, 64)
    real = tiny_sed.clip.forward_features(x)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in real.items()}
    tiny_sed.clip.forward_features = lambda images: leaves
    out = tiny_sed.predict(x)
    grads = torch.autograd.grad(out["logits"].sum(), [leaves[k] for k in ("res2", "res3", "res4", "res5")],
                                allow_unused=True)
    assert all(g is None or not g.any() for g in grads[:3])
    assert grads[3] is not None and grads[3].abs().sum() > 0


def test_auxiliary_heads_do_not_train_the_decoder(tiny_sed):
    tiny_sed.train()
    out = tiny_sed.predict(torch.randn(1, 3, 64, 64))
    sum(a.sum() for a in out["aux"]).backward()
    dec = tiny_sed.decoder
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in dec.aux_heads.parameters())
    others = [p for n, p in dec.named_parameters() if not n.startswith("aux_heads")]
    assert all(p.grad is None or not p.grad.any() for p in others)
    assert all(p.grad is None or not p.grad.any() for p in tiny_sed.clip.parameters())


def test_parameter_groups(sed_b):
    cfg = sed_cfg()
    opt = build_optimizer(cfg, sed_b)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    base = cfg.SOLVER.BASE_LR
    for n, p in sed_b.clip.model.named_parameters():
        if n.startswith("visual."):
            assert lr_of[id(p)] == pytest.approx(base * 0.01), n
        else:
            assert id(p) not in lr_of and not p.requires_grad, n  # text encoder frozen
    assert all(lr_of[id(p)] == pytest.approx(base) for p in sed_b.decoder.parameters())
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == 89_598_220


def test_tiny_sed_trains_through_train_net(data_root, tmp_path):
    out = str(tmp_path / "sed_run")
    cfg_file = os.path.join(REPO, "configs", "toy", "sed_toy.yaml")
    args = train_args(out, iters=2, extra=("MODEL.META_ARCHITECTURE", "SED", "MODEL.SED.CLIP_RESOLUTION", "(64, 64)",
                                           "MODEL.CLIP.NAME", "ovss-tiny-convnext", "MODEL.SED.HIDDEN_DIM", "32",
                                           "MODEL.SED.DECODER_DIMS", "[16, 16, 16]",
                                           "MODEL.SED.GUIDANCE_PROJ_DIMS", "[8, 8, 8]"))
    args.config_file = cfg_file
    train_worker(data_root, args)
    ckpt = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 1 and all(torch.isfinite(v.float()).all() for v in ckpt["model"].values())
