import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers import (REPO, assert_official_checkpoint_is_strict, param_counts, random_official_state_dict,
                     register_tiny_splits, train_args, train_worker)
from ovss_d2.checkpoint import OVSSCheckpointer
from ovss_d2.engine import OVSSTrainer, build_optimizer, load_config
from ovss_d2.modeling.converters import convert_err_seg_official
from ovss_d2.modeling.cost_aggregation import crm_scores, crm_select
from ovss_d2.modeling.heads.err_seg_decoder import DROPPED_LOGIT
from ovss_d2.modeling.meta_arch.err_seg import dense_embedding_stride16


def err_cfg(config="err_seg_convnext_b_640.yaml"):
    return load_config(os.path.join(REPO, "configs", "err_seg", config),
                       ["MODEL.CLIP.PRETRAINED", "none", "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "()",
                        "DATASETS.TEST", "()"])


@pytest.fixture(scope="module")
def err_b():
    return OVSSTrainer.build_model(err_cfg())


def test_parameter_counts_are_official(err_b):
    """The authors' model (their vendored open_clip, with ``visual.modify_downsample``)."""
    assert param_counts(err_b) == (188_853_370, 126_432_633)
    large = OVSSTrainer.build_model(err_cfg("err_seg_convnext_l_640_768.yaml"))
    assert param_counts(large) == (365_745_722, 268_653_049)
    # ConvNeXt-L's official layout loads strictly too
    large.load_state_dict(convert_err_seg_official(random_official_state_dict("err_seg_vendored_convnext_large.json")),
                          strict=True)


def test_official_layout_converts_and_loads_strictly(err_b, tmp_path):
    official = random_official_state_dict("err_seg_vendored_convnext_base.json")  # reads ../shared/reference
    err_b.load_state_dict(convert_err_seg_official(official), strict=True)
    d, v = "sem_seg_head.decoder.", "sem_seg_head.clip_model.visual."
    assert torch.equal(err_b.decoder.layers[3].klass.block.mlp.fc3.weight,
                       official[d + "aggregator_layers.3.class_fusion.sa.mlp.fc3.weight"])
    assert torch.equal(err_b.decoder.up[2].fuse[4].bias, official[d + "up_decoder3.textual_fusion.4.bias"])
    # their stride-1 down-sampling is a module of its own, apart from stage 3's
    modify = err_b.clip.model.visual.modify_downsample
    assert torch.equal(modify[2].weight, official[v + "modify_downsample.2.weight"])
    assert torch.equal(modify[0].bias, official[v + "modify_downsample.0.bias"])
    assert not torch.equal(modify[2].weight, err_b.clip.model.visual.trunk.stages[3].downsample[1].weight)
    path = str(tmp_path / "err_official.pth")
    torch.save({"model": official}, path)
    torch.nn.init.zeros_(err_b.decoder.head.weight)
    OVSSCheckpointer(err_b).load(path)  # converted on the fly
    assert torch.equal(err_b.decoder.head.weight, official[d + "head.weight"])


def test_checkpoint_with_an_extra_or_a_missing_tensor_fails_naming_it(err_b, tmp_path):
    # without the stride-1 down-sampling (the layout of upstream open_clip) a tensor of ours gets nothing
    assert_official_checkpoint_is_strict(
        err_b, "err_seg_vendored_convnext_base.json", tmp_path, "sem_seg_head.decoder.nonsense.weight",
        "sem_seg_head.clip_model.visual.modify_downsample.2.weight", "clip.model.visual.modify_downsample.2.weight")


def test_stride1_downsample_is_copied_from_stage3_frozen_by_weight_and_trained_by_full(data_root, tmp_path):
    for strategy, trained in (("weight", False), ("full", True)):
        model = tiny_err(tmp_path, ("MODEL.ERR_SEG.CLIP_FINETUNE", strategy))
        visual = model.clip.model.visual
        norm, conv = visual.trunk.stages[3].downsample
        modify = visual.modify_downsample
        assert [type(m).__name__ for m in modify] == ["LayerNorm2d", "ZeroPad2d", "Conv2d"]
        assert modify[2].stride == (1, 1) and modify[1].padding == (1, 1, 1, 1)
        assert torch.equal(modify[2].weight, conv.weight) and modify[2].weight is not conv.weight
        assert torch.equal(modify[0].weight, norm.weight) and modify[0].eps == norm.eps
        assert all(p.requires_grad == trained for p in modify.parameters()), strategy
    # the stride-16 embedding by hand: norm, zero pad, 2x2 conv at stride 1, resized back, last stage, head
    res4 = torch.randn(1, conv.in_channels, 6, 6)
    with torch.no_grad():
        modify[2].weight.add_(0.5)  # its own weights, not stage 3's
        x = F.conv2d(F.pad(F.layer_norm(res4.permute(0, 2, 3, 1), (res4.shape[1],), modify[0].weight,
                                        modify[0].bias, modify[0].eps).permute(0, 3, 1, 2), (1, 1, 1, 1)),
                     modify[2].weight, modify[2].bias)
        x = visual.trunk.stages[3].blocks(F.interpolate(x, size=(6, 6), mode="bilinear", align_corners=False))
        x = visual.head(visual.trunk.head.norm(visual.trunk.norm_pre(x)).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        assert torch.allclose(dense_embedding_stride16(model.clip, {"res4": res4}), x, atol=1e-5)


def _loop_crm(cost, k, gt=None):
    """The straightforward per-image loop (as the authors write it): score by rank counts, the top-k
    candidates; in training the ground truth, then the candidates by class id, the first k."""
    b, _, n = cost.shape[:3]
    mean = cost.mean(1)
    out = []
    for i in range(b):
        score = torch.zeros(n)
        for rank, w in enumerate([1.0, 0.1, 0.01][:min(3, n)]):
            top = mean[i].topk(min(3, n), dim=0).indices[rank]
            score += w * torch.bincount(top.flatten(), minlength=n).float()
        candidates = sorted(score.argsort(descending=True, stable=True).tolist()[:k])
        chosen = [c for c in range(n) if gt is not None and gt[i, c]]
        chosen += [c for c in candidates if c not in chosen]
        out.append(sorted(chosen[:k]))
    return out


def _assert_same_up_to_ties(selected, expected, cost):
    score = crm_scores(cost)
    for i, (a, b) in enumerate(zip(selected.tolist(), expected)):
        differ = set(a) ^ set(b)  # classes chosen differently must tie (at the cut)
        assert len({round(score[i, c].item(), 4) for c in differ}) <= 1, (i, a, b)


def test_crm_matches_a_loop_on_random_cost_maps():
    torch.manual_seed(0)
    cost = torch.randn(3, 1, 40, 6, 7)
    for k in (5, 16, 39):
        _assert_same_up_to_ties(crm_select(cost, k), _loop_crm(cost, k), cost)
    gt = torch.zeros(3, 40, dtype=torch.bool)
    gt[0, [3, 17]] = True
    gt[1, :12] = True  # more ground-truth classes than k: the 8 lowest ids
    gt[2, 39] = True
    sel = crm_select(cost, 8, gt)
    _assert_same_up_to_ties(sel, _loop_crm(cost, 8, gt), cost)
    assert {3, 17} <= set(sel[0].tolist()) and sel[1].tolist() == list(range(8)) and 39 in sel[2].tolist()
    assert crm_scores(cost).sum(1).allclose(torch.full((3,), 42 * 1.11))


def test_crm_by_hand():
    """Four pixels, five classes, costs chosen so every rank is known (P = 2 templates averaged)."""
    ranking = [[2, 0, 4, 1, 3], [2, 4, 0, 3, 1], [1, 2, 3, 0, 4], [0, 2, 4, 3, 1]]  # best first, per pixel
    cost = torch.zeros(1, 2, 5, 2, 2)
    for p, order in enumerate(ranking):
        for r, c in enumerate(order):
            cost[0, 0, c, p // 2, p % 2] = 1.0 - 0.2 * r + 0.05
            cost[0, 1, c, p // 2, p % 2] = 1.0 - 0.2 * r - 0.05
    # class 0: 0.1 + 0.01 + 1 = 1.11; class 1: 1; class 2: 1 + 1 + 0.1 + 0.1 = 2.2; class 3: 0.01;
    # class 4: 0.01 + 0.1 + 0.01 = 0.12
    assert torch.allclose(crm_scores(cost), torch.tensor([[1.11, 1.0, 2.2, 0.01, 0.12]]))
    assert crm_select(cost, 2).tolist() == [[0, 2]]
    assert crm_select(cost, 3).tolist() == [[0, 1, 2]]
    # training, ground truth {3}: then the lowest ids among the top-3 candidates {0, 1, 2} (keeping
    # the highest-scoring ones instead would give {0, 2, 3})
    assert crm_select(cost, 3, torch.tensor([[False, False, False, True, False]])).tolist() == [[0, 1, 3]]
    # ground truth {3, 4}: then candidate 0 (not 2, the best-scoring one)
    assert crm_select(cost, 3, torch.tensor([[False, False, False, True, True]])).tolist() == [[0, 3, 4]]
    # ground truth {1, 3, 4} with k = 2: the two lowest ids
    assert crm_select(cost, 2, torch.tensor([[False, True, False, True, True]])).tolist() == [[1, 3]]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("err_data"))
    register_tiny_splits(root)
    return root


def tiny_err(tmp_path, extra=()):
    cfg = load_config(os.path.join(REPO, "configs", "toy", "err_seg_toy.yaml"), [
        "MODEL.CLIP.PRETRAINED", "none", "DATASETS.TRAIN", "('tiny_train',)", "DATASETS.TEST", "('tiny_val',)",
        "MODEL.ERR_SEG.CLIP_RESOLUTION", "(64, 64)", "MODEL.ERR_SEG.TEST_RESOLUTION", "(64, 64)",
        "OUTPUT_DIR", str(tmp_path), *extra])
    torch.manual_seed(0)
    return OVSSTrainer.build_model(cfg)


def test_crm_reduces_to_the_top_classes_and_decodes_them_as_a_vocabulary_of_their_own(data_root, tmp_path):
    """CRM keeping 4 of 10 classes: the kept classes are the top 4 of the scores computed by hand
    from the stride-16 cost map, and their scores equal those of the model run without CRM on a
    vocabulary of those 4 classes (the decoder only ever sees the kept classes); the others get
    DROPPED_LOGIT."""
    model = tiny_err(tmp_path).eval()
    names = [f"class {i}" for i in range(10)]
    model.set_vocabulary(names)
    g = torch.Generator().manual_seed(3)
    image = torch.randint(0, 255, (3, 37, 53), dtype=torch.uint8, generator=g)
    x = model.resize_to(((image.float() - model.pixel_mean) / model.pixel_std)[None], model.test_resolution)
    with torch.no_grad():
        model.crm_test = 4
        out = model.predict(x)
        # the scores by hand: each pixel's three most similar classes count 1, 0.1, 0.01
        emb = F.normalize(dense_embedding_stride16(model.clip, model.clip.forward_features(x)), dim=1)[0]
        text = model.class_embeddings().mean(1)  # one template
        sim = torch.einsum("dhw,nd->hwn", emb, F.normalize(text, dim=-1)).reshape(-1, 10)
        score = torch.zeros(10)
        for row in sim:
            for w, c in zip((1.0, 0.1, 0.01), row.argsort(descending=True)[:3].tolist()):
                score[c] += w
        ordered = score.sort(descending=True)
        assert ordered.values[3] - ordered.values[4] > 1e-3  # no tie at the cut
        kept = sorted(ordered.indices[:4].tolist())
        assert out["kept"][0].tolist() == kept
        dropped = [c for c in range(10) if c not in kept]
        assert (out["logits"][0, dropped] == DROPPED_LOGIT).all()
        model.crm_test = 0
        model.set_vocabulary([names[c] for c in kept])
        alone = model.predict(x)["logits"]
    assert torch.allclose(out["logits"][0, kept], alone[0], atol=1e-5)


def test_crm_keeping_every_class_equals_no_crm(data_root, tmp_path):
    model = tiny_err(tmp_path).eval()
    model.set_vocabulary([f"class {i}" for i in range(10)])
    image = torch.randint(0, 255, (3, 37, 53), dtype=torch.uint8)
    with torch.no_grad():
        model.crm_test = 0
        plain = model([{"image": image, "height": 37, "width": 53}])[0]["sem_seg"]
        model.crm_test = 10
        same = model([{"image": image, "height": 37, "width": 53}])[0]["sem_seg"]
    assert plain.shape == (10, 37, 53)
    assert torch.allclose(plain, same, atol=1e-5)


def test_gud_guidance_is_stop_gradient(data_root, tmp_path):
    model = tiny_err(tmp_path).train()
    x = torch.randn(1, 3, 64, 64)
    real = model.clip.forward_features(x)
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in real.items()}
    model.clip.forward_features = lambda images: leaves
    model.set_vocabulary(["a", "b", "c"])
    out = model.predict(x)
    g2, g3 = torch.autograd.grad(out["logits"].sum(), [leaves["res2"], leaves["res3"]], allow_unused=True)
    assert all(g is None or not g.any() for g in (g2, g3))  # res2 / res3 reach the decoder as guidance only
    g4, g5 = torch.autograd.grad(model.predict(x)["logits"].sum(), [leaves["res4"], leaves["res5"]])
    assert g4.abs().sum() > 0 and g5.abs().sum() > 0  # through the cost maps and the aggregator guidance


def test_parameter_groups_and_text_finetuning(err_b):
    cfg = err_cfg()
    opt = build_optimizer(cfg, err_b)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    base = cfg.SOLVER.BASE_LR
    trained_text = [n for n, p in err_b.clip.model.named_parameters() if id(p) in lr_of and not n.startswith("visual.")]
    assert trained_text and all("in_proj_weight" in n or "c_fc.weight" in n for n in trained_text)
    assert all(lr_of[id(p)] == pytest.approx(base * 0.01) for n, p in err_b.clip.model.named_parameters()
               if id(p) in lr_of)
    assert all(lr_of[id(p)] == pytest.approx(base) for p in err_b.decoder.parameters())
    assert not any("downsample" in n for n, p in err_b.clip.model.named_parameters() if p.requires_grad)


def test_text_encoder_gets_gradients_in_training(data_root, tmp_path):
    model = tiny_err(tmp_path).train()
    batch = [{"image": torch.randint(0, 255, (3, 48, 64), dtype=torch.uint8),
              "sem_seg": torch.randint(0, 3, (48, 64))}]
    sum(model(batch).values()).backward()
    text_grads = [p.grad for n, p in model.clip.model.named_parameters()
                  if "c_fc.weight" in n and not n.startswith("visual.")]
    assert text_grads and all(g is not None and g.abs().sum() > 0 for g in text_grads)


def test_tiny_err_seg_trains_through_train_net(data_root, tmp_path):
    out = str(tmp_path / "run")
    args = train_args(out, iters=2, extra=("MODEL.CLIP.NAME", "ovss-tiny-convnext",
                                           "MODEL.ERR_SEG.CLIP_RESOLUTION", "(64, 64)",
                                           "MODEL.ERR_SEG.TEST_RESOLUTION", "(64, 64)"))
    args.config_file = os.path.join(REPO, "configs", "toy", "err_seg_toy.yaml")
    train_worker(data_root, args)
    ckpt = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 1 and all(torch.isfinite(v.float()).all() for v in ckpt["model"].values())


def test_dataset_settings_switch_crm_per_benchmark(data_root, tmp_path):
    from detectron2.data import MetadataCatalog
    model = tiny_err(tmp_path).eval()
    configured = model.crm_test
    MetadataCatalog.get("tiny_val").set(err_seg_crm_test=3)
    try:
        model.use_dataset("tiny_val")
        assert model.crm_test == 3 and model.vocabulary == MetadataCatalog.get("tiny_val").stuff_classes
        model.use_dataset("tiny_train")  # no per-benchmark N: the configured value comes back
        assert model.crm_test == configured
        model.use_dataset("tiny_val", apply_settings=False)  # TEST.DATASET_SETTINGS False
        assert model.crm_test == configured
    finally:
        del MetadataCatalog.get("tiny_val").err_seg_crm_test


def test_warm_up_and_test_time_resizing_are_the_authors():
    """Their configs inherit detectron2's linear warm-up (1000 iterations from 0.001 x) and its test
    mapper (shortest edge 800, at most 1333) before the model resizes to 640 x 640."""
    import math

    from detectron2.data import transforms as T

    from ovss_d2.data.dataset_mapper import build_sem_seg_augmentations

    cfg = err_cfg()
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=cfg.SOLVER.BASE_LR)
    sched = OVSSTrainer.build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(1001):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    base, n = cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER
    end = base * 0.5 * (1 + math.cos(math.pi * 1000 / n))  # detectron2: linear from 0.001 x to the cosine at 1000
    for it in (0, 500, 1000):
        assert lrs[it] == pytest.approx(0.001 * base + (end - 0.001 * base) * it / 1000, rel=1e-6), it
    image = np.zeros((480, 640, 3), np.uint8)
    resized = T.AugmentationList(build_sem_seg_augmentations(cfg, is_train=False))(T.AugInput(image))
    assert resized.apply_image(image).shape[:2] == (800, 1067)
    assert tuple(cfg.MODEL.ERR_SEG.TEST_RESOLUTION) == (640, 640)
