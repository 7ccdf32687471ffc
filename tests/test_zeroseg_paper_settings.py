"""ZeroSeg as its paper (and the code it builds on, GroupViT and MAE) set it up (issue 25): GroupViT's
sliding-window evaluation, MAE's schedule, weight-decay rule and initialisation, GroupViT's head
(projector from the previous stage's group tokens, 5 layers), the L1 switch, and every ablation
of Tables 3, 4 and 5 training a step."""
import glob
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from helpers import REPO
from ovss_d2.engine import OVSSTrainer, build_param_groups, load_config
from ovss_d2.engine.lr_scheduler import WarmupHalfCosineLR
from ovss_d2.modeling.sliding_window import sliding_window_boxes, sliding_window_scores


def zeroseg_cfg(config="toy/zeroseg_toy.yaml", *extra):
    return load_config(os.path.join(REPO, "configs", config), [
        "MODEL.CLIP.PRETRAINED", "none", "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
        *extra])


def build(*extra, config="toy/zeroseg_toy.yaml"):
    torch.manual_seed(0)
    return OVSSTrainer.build_model(zeroseg_cfg(config, *extra))


@pytest.fixture(scope="module")
def tiny_zeroseg():
    return build()


# ---- 1. GroupViT's sliding windows ---------------------------------------------------------------
def test_window_arithmetic_by_hand():
    # mmsegmentation's slide mode: ceil((size - crop) / stride) + 1 windows per axis, the last one
    # moved back to end at the border, cut to the image when the image is shorter than the crop
    assert sliding_window_boxes(5, 7, 4, 2) == [(0, 4, 0, 4), (0, 4, 2, 6), (0, 4, 3, 7),
                                                (1, 5, 0, 4), (1, 5, 2, 6), (1, 5, 3, 7)]
    # a VOC image after the short side goes to 448 (500 x 375 -> 448 x 597): two windows
    assert sliding_window_boxes(448, 597, 448, 224) == [(0, 448, 0, 448), (0, 448, 149, 597)]
    assert sliding_window_boxes(448, 896, 448, 224) == [(0, 448, 0, 448), (0, 448, 224, 672), (0, 448, 448, 896)]
    assert sliding_window_boxes(3, 2, 4, 2) == [(0, 3, 0, 2)]  # smaller than a window: one, the whole image
    with pytest.raises(ValueError, match="positive"):
        sliding_window_boxes(4, 4, 4, 0)


def test_window_merge_by_hand():
    image = torch.zeros(1, 1, 4)  # (C, H, W): windows of 2 at stride 1 -> x in [0, 2), [1, 3), [2, 4)
    calls = []

    def predict(window):  # window k (1-based) scores k in class 0 and 10 * k in class 1
        calls.append(tuple(window.shape))
        k = len(calls)
        return torch.stack([torch.full(window.shape[1:], float(k)), torch.full(window.shape[1:], 10.0 * k)])

    merged = sliding_window_scores(image, 2, 1, predict)
    assert calls == [(1, 1, 2)] * 3
    np.testing.assert_allclose(merged[0, 0].numpy(), [1.0, 1.5, 2.5, 3.0])
    np.testing.assert_allclose(merged[1, 0].numpy(), [10.0, 15.0, 25.0, 30.0])


def test_slide_inference_names_each_window_on_its_own(tiny_zeroseg):
    model = tiny_zeroseg.eval()
    model.set_vocabulary(["background", "red square", "blue circle", "grass"])
    image = torch.randint(0, 255, (3, 24, 40), dtype=torch.uint8)
    torch.manual_seed(1)
    with torch.no_grad():
        model.test_mode = "whole"
        left = model([{"image": image[:, :, :24].clone()}])[0]["sem_seg"]
        right = model([{"image": image[:, :, 16:].clone()}])[0]["sem_seg"]
        model.test_mode, model.test_crop_size, model.test_stride = "slide", 24, 16  # windows x [0, 24), [16, 40)
        try:
            slid = model([{"image": image, "height": 24, "width": 40}])[0]["sem_seg"]
        finally:
            model.test_mode = "whole"
    expected = np.zeros((4, 24, 40))
    expected[:, :, :16] = left[:, :, :16]
    expected[:, :, 16:24] = (left[:, :, 16:].numpy() + right[:, :, :8].numpy()) / 2
    expected[:, :, 24:] = right[:, :, 8:]
    np.testing.assert_allclose(slid.numpy(), expected, atol=1e-6)
    # the background channel is each window's 0 / 1 decision, averaged where windows overlap
    assert set(np.unique(slid[0].numpy())) <= {0.0, 0.5, 1.0}


# ---- 2. MAE's optimisation ------------------------------------------------------------------------
def test_half_cosine_schedule_at_chosen_iterations():
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [param], "lr": 2.0}])
    scheduler = WarmupHalfCosineLR(optimizer, max_iters=100, warmup_iters=20)
    lrs = []
    for _ in range(101):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # warm-up: 2 * it / 20; then 2 * (1 + cos(pi * (it - 20) / 80)) / 2
    expected = {0: 0.0, 5: 0.5, 10: 1.0, 20: 2.0, 40: 1.0 + math.sqrt(0.5), 60: 1.0, 80: 1.0 - math.sqrt(0.5),
                100: 0.0}
    for it, lr in expected.items():
        assert lrs[it] == pytest.approx(lr, abs=1e-12), it
    assert max(lrs) == pytest.approx(2.0)  # peaks at the base rate (detectron2's WarmupCosineLR: 0.85x)


def test_config_key_picks_the_half_cosine_schedule():
    cfg = zeroseg_cfg("zeroseg/zeroseg_vitb16_in1k.yaml")
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=cfg.SOLVER.BASE_LR)
    scheduler = OVSSTrainer.build_lr_scheduler(cfg, optimizer)
    assert isinstance(scheduler, WarmupHalfCosineLR)
    assert (scheduler.max_iters, scheduler.warmup_iters) == (25024, 6256)
    assert cfg.SOLVER.BASE_LR == pytest.approx(1e-4 * 4096 / 256)  # Table 7's base rate per 256 images


def test_mae_no_decay_parameter_set(tiny_zeroseg):
    cfg = zeroseg_cfg()
    assert cfg.SOLVER.WEIGHT_DECAY_RULE == "mae"
    groups = build_param_groups(cfg, tiny_zeroseg)
    names = {id(p): n for n, p in tiny_zeroseg.named_parameters()}
    no_decay = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    decay = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    assert all(g["weight_decay"] in (0.0, 0.05) for g in groups)
    trainable = {n for n, p in tiny_zeroseg.named_parameters() if p.requires_grad}
    assert no_decay | decay == trainable and not no_decay & decay
    assert no_decay == {n for n in trainable if n.endswith("bias") or tiny_zeroseg.get_parameter(n).ndim == 1}
    # tokens are 3-D: decayed, as MAE and GroupViT do (our other rule exempts them as embeddings)
    assert {"decoder.mask_token", "head.group_tokens.0", "head.group_tokens.1", "encoder.patch_embed.weight"} <= decay
    assert {"encoder.norm.weight", "encoder.patch_embed.bias", "head.grouping.0.assign.q.bias"} <= no_decay
    other = build_param_groups(zeroseg_cfg("toy/zeroseg_toy.yaml", "SOLVER.WEIGHT_DECAY_RULE", "norm_embed"),
                               tiny_zeroseg)
    assert "decoder.mask_token" in {names[id(p)] for g in other if g["weight_decay"] == 0 for p in g["params"]}


def test_mae_and_groupvit_initialisation():
    model = build(config="zeroseg/zeroseg_vitb16_in1k.yaml")
    fc = model.encoder.blocks[0].mlp.fc1  # MAE: xavier uniform, bound sqrt(6 / (fan_in + fan_out))
    bound = math.sqrt(6 / (768 + 3072))
    assert fc.weight.abs().max() <= bound and fc.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert not fc.bias.any()
    patch = model.encoder.patch_embed.weight.view(768, -1)  # as a (768, 3 * 16 * 16) matrix
    assert patch.abs().max() <= math.sqrt(6 / (768 + 768)) and patch.std() > 0.8 * math.sqrt(2 / (768 + 768))
    assert model.decoder.mask_token.std().item() == pytest.approx(0.02, rel=0.1)
    q = model.head.grouping[0].assign.q  # GroupViT: truncated normal, std 0.02
    assert q.weight.std().item() == pytest.approx(0.02, rel=0.05) and not q.bias.any()
    assert model.head.group_tokens[0].std().item() == pytest.approx(0.02, rel=0.2)
    assert not model.head.group_tokens[1].any()  # the projected stage starts from zeros
    toy_q = build().head.grouping[0].assign.q  # the toy config's HEAD_INIT torch: PyTorch's U(+-1/sqrt(96))
    assert toy_q.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 96), rel=0.05)


# ---- 5. GroupViT's head ---------------------------------------------------------------------------
def test_second_stage_tokens_come_from_the_first_stage_group_tokens(tiny_zeroseg):
    model = tiny_zeroseg.eval()
    seen = {}
    first_stage = model.head.stages[0][-1]
    hooks = [first_stage.register_forward_hook(lambda m, i, o: seen.__setitem__("stage0", o)),
             model.head.carry[0].register_forward_hook(lambda m, i, o: seen.__setitem__("carry_in", i[0]))]
    try:
        with torch.no_grad():
            model.head(torch.randn(2, 64, model.encoder.dim))
    finally:
        for h in hooks:
            h.remove()
    g1 = model.head.num_group_tokens[0]
    assert torch.equal(seen["carry_in"], seen["stage0"][:, :g1])  # the group tokens, not the segments


def test_paper_head_has_five_layers_and_pools_z_from_the_last():
    model = build(config="zeroseg/zeroseg_vitb16_in1k.yaml")
    head = model.head
    assert sum(len(s) for s in head.stages) == 5 and head.global_layer is None
    tokens = torch.randn(1, 196, 768)
    hooked = {}
    h = head.eval().norm.register_forward_hook(lambda m, i, o: hooked.__setitem__("final", o))
    try:
        with torch.no_grad():
            out = head(tokens)
    finally:
        h.remove()
    assert torch.allclose(out["global"], head.projector(hooked["final"].mean(1)), atol=1e-5)


# ---- 3. the L1 switch, 6. Tables 3 and 4 ----------------------------------------------------------
def _losses(model, teacher, seed=0):
    torch.manual_seed(seed)
    images = torch.randn(2, 3, model.image_size, model.image_size)
    return model.distillation_losses(images, teacher)


def test_sum_l1_is_the_l1_distance():
    mean, total = build(), build("MODEL.ZEROSEG.L1_DISTANCE", "sum")
    teacher = F.normalize(torch.randn(2, 30, mean.clip.embed_dim), dim=-1)
    a, b = _losses(mean.train(), teacher), _losses(total.train(), teacher)
    d = mean.clip.embed_dim
    for key in ("loss_distill", "loss_matching"):
        assert b[key].item() == pytest.approx(d * a[key].item(), rel=1e-5)
    assert b["loss_reconstruction"].item() == pytest.approx(a["loss_reconstruction"].item(), rel=1e-6)


def _train_step(model):
    size = model.image_size
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    before = [p.detach().clone() for p in model.head.parameters()]
    losses = model.train()([{"image": torch.randint(0, 255, (3, size, size), dtype=torch.uint8)} for _ in range(2)])
    sum(losses.values()).backward()
    optimizer.step()
    assert all(torch.isfinite(v) for v in losses.values())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.head.parameters()))
    return losses


def test_grids_1_trains_a_step_without_matching():
    model = build("MODEL.ZEROSEG.GRIDS", "[1]")  # Table 3's 1x1 row = Table 4's "Base"
    assert set(_train_step(model)) == {"loss_distill", "loss_reconstruction"}


def test_table4_switch_distils_only_the_whole_image_and_matches_the_cells():
    model = build("MODEL.ZEROSEG.DISTILL_GRIDS", "[1]").train()  # "Base + segment matching"
    assert set(_train_step(model)) == {"loss_distill", "loss_matching", "loss_reconstruction"}
    d = model.clip.embed_dim
    teacher = F.normalize(torch.randn(2, 30, d), dim=-1)
    changed = teacher.clone()
    changed[:, 1:] = -teacher[:, :1]  # other grid cells (all opposite to the whole image), same whole image
    a, b = _losses(model, teacher), _losses(model, changed)
    assert a["loss_distill"].item() == pytest.approx(b["loss_distill"].item(), rel=1e-6)
    assert a["loss_matching"].item() != pytest.approx(b["loss_matching"].item(), rel=1e-3)
    moved = teacher.clone()
    moved[:, 0] = F.normalize(torch.randn(2, d), dim=-1)  # another whole-image view
    assert _losses(model, moved)["loss_distill"].item() != pytest.approx(a["loss_distill"].item(), rel=1e-3)
    with pytest.raises(ValueError, match="DISTILL_GRIDS"):
        build("MODEL.ZEROSEG.DISTILL_GRIDS", "[5]")


# ---- the paper configs and every ablation row -----------------------------------------------------
def test_paper_configs_use_the_paper_protocol_and_optimisation():
    cfg = zeroseg_cfg("zeroseg/zeroseg_vitb16_in1k.yaml")
    z = cfg.MODEL.ZEROSEG
    assert (z.TEST_MODE, z.TEST_CROP_SIZE, z.TEST_STRIDE) == ("slide", 448, 224)
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (448, 2048)
    assert cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupHalfCosineLR" and cfg.SOLVER.WEIGHT_DECAY_RULE == "mae"
    assert tuple(cfg.SOLVER.BETAS) == (0.9, 0.95) and cfg.SOLVER.WEIGHT_DECAY == 0.05
    assert z.L1_DISTANCE == "sum" and not z.GLOBAL_LAYER and z.MASK_RATIO == 0.6
    for path in glob.glob(os.path.join(REPO, "configs", "zeroseg", "eval_*.yaml")):
        e = zeroseg_cfg(os.path.relpath(path, os.path.join(REPO, "configs"))).MODEL.ZEROSEG
        assert e.TEST_MODE == "slide"


ABLATIONS = {  # config -> (GRIDS, DISTILL_GRIDS, MATCHING_WEIGHT)
    "table3_grids_1": ([1], [], 1.0), "table3_grids_1_2": ([1, 2], [], 1.0), "table3_grids_1_3": ([1, 3], [], 1.0),
    "table3_grids_1_4": ([1, 4], [], 1.0), "table4_base_multiscale": ([1, 2, 3, 4], [], 0.0),
    "table4_base_matching": ([1, 2, 3, 4], [1], 1.0),
}


def test_every_ablation_config_sets_its_row():
    found = {os.path.basename(p)[:-5] for p in glob.glob(os.path.join(REPO, "configs", "zeroseg", "ablations", "*"))}
    assert found == set(ABLATIONS)
    for name, (grids, distill, matching) in ABLATIONS.items():
        cfg = zeroseg_cfg(f"zeroseg/ablations/{name}.yaml")
        z = cfg.MODEL.ZEROSEG
        assert (list(z.GRIDS), list(z.DISTILL_GRIDS), z.MATCHING_WEIGHT) == (grids, distill, matching), name
        assert cfg.OUTPUT_DIR.endswith(name) and cfg.SOLVER.MAX_ITER == 25024


@pytest.mark.parametrize("mask_ratio", ["0.0", "0.8"])  # Table 5's ends (MODEL.ZEROSEG.MASK_RATIO)
def test_mask_ratio_rows_train_a_step(mask_ratio):
    losses = _train_step(build("MODEL.ZEROSEG.MASK_RATIO", mask_ratio))
    if mask_ratio == "0.0":  # nothing masked: nothing to reconstruct
        assert losses["loss_reconstruction"].item() == 0.0
