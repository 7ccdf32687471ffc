"""ViL-Seg as its paper writes it (issue 25, items 7-10): where the clustering loss's gradient goes
(Eq. 1), the K-means model of Table 2 (no head, no L_cluster), Eq. 2's vision contrast and DINO's
recipe as a switch, and the self-training pseudo-labels and fine-tuning loss ("+ ST")."""
import json
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import build_model
from PIL import Image

from helpers import REPO, register_tiny
from ovss_d2.engine import load_config
from ovss_d2.modeling.contrastive import MultiCropDistillation, dino_teacher_momentum, ema_update_
from ovss_d2.modeling.self_training import ConfidentPixelSelector, pixel_cross_entropy, quantize_confidence

BASE = os.path.join(REPO, "configs", "vil_seg", "Base-ViLSeg.yaml")


def _tiny_cfg(*extra):
    """ovss-tiny-vit ViL-Seg on the method's base config: 5 clusters, Phi_a of 32, no datasets."""
    return load_config(BASE, [
        "MODEL.CLIP.NAME", "ovss-tiny-vit", "MODEL.DEVICE", "cpu", "MODEL.VIL_SEG.PROJECTION_DIM", "32",
        "MODEL.VIL_SEG.NUM_CLUSTERS", "5", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
        "SOLVER.MAX_ITER", "10", *extra])


def _batch(b=2, size=32, local=16, views=2, seed=0):
    """Training inputs as MultiCropCaptionMapper makes them (random pixels)."""
    g = torch.Generator().manual_seed(seed)
    return [{"image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g),
             "local_views": torch.randint(0, 256, (views, 3, local, local), dtype=torch.uint8, generator=g),
             "iic_image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=g),
             "iic_flipped": i % 2 == 0, "caption": ["a red square.", "the blue sky over grass."][i % 2]}
            for i in range(b)]


def _grads(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    encoder = [p.grad for p in model.clip.model.visual.parameters()]
    head = [p.grad for p in model.cluster_head.parameters()]
    enc_norm = sum(float(g.abs().sum()) for g in encoder if g is not None)
    return enc_norm, all(g is not None and g.abs().sum() > 0 for g in head)


# ---- item 7: the clustering loss's gradient -----------------------------------------------------
def test_cluster_loss_trains_the_head_only_as_eq1_writes_it():
    torch.manual_seed(0)
    model = build_model(_tiny_cfg()).train()
    assert model.cluster_grad_to_encoder is False  # the default is Eq. 1
    losses = model(_batch())
    enc, head = _grads(model, losses["loss_cluster"])
    assert head and enc == 0.0  # L_cluster reaches Phi_c, not the encoder
    # the caption loss still trains the encoder (the encoder is not frozen)
    enc_cross, _ = _grads(model, model(_batch())["loss_cross"])
    assert enc_cross > 0

    torch.manual_seed(0)
    other = build_model(_tiny_cfg("MODEL.VIL_SEG.CLUSTER_GRAD_TO_ENCODER", "True")).train()
    enc, head = _grads(other, other(_batch())["loss_cluster"])
    assert head and enc > 0  # the other reading: L_cluster also shapes the embeddings


# ---- item 8: the K-means model of Table 2 ----------------------------------------------------------
def test_kmeans_config_trains_without_head_or_cluster_loss():
    paper = load_config(os.path.join(REPO, "configs", "vil_seg", "vil_seg_vitb16_cc12m.yaml"))
    kmeans_cfg = load_config(os.path.join(REPO, "configs", "vil_seg", "vil_seg_vitb16_cc12m_kmeans.yaml"))
    assert kmeans_cfg.MODEL.VIL_SEG.CLUSTERING == "kmeans"
    kmeans_cfg.MODEL.VIL_SEG.CLUSTERING, kmeans_cfg.OUTPUT_DIR = paper.MODEL.VIL_SEG.CLUSTERING, paper.OUTPUT_DIR
    assert kmeans_cfg.dump() == paper.dump()  # the same training otherwise

    torch.manual_seed(0)
    full = build_model(_tiny_cfg())
    torch.manual_seed(0)
    model = build_model(_tiny_cfg("MODEL.VIL_SEG.CLUSTERING", "kmeans")).train()
    assert model.cluster_head is None and not any("cluster_head" in k for k in model.state_dict())
    n = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in full.parameters()) - n == 5 * model.clip.embed_dim + 5  # the head's 1x1 conv
    losses = model(_batch())
    assert set(losses) == {"loss_cross", "loss_vision"}  # no L_cluster
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.clip.model.visual.conv1.weight.detach().clone()
    sum(losses.values()).backward()
    opt.step()
    assert not torch.equal(before, model.clip.model.visual.conv1.weight)  # a training step ran
    # the IIC copy is not needed without a head
    batch = _batch()
    for x in batch:
        del x["iic_image"], x["iic_flipped"]
    assert set(model(batch)) == {"loss_cross", "loss_vision"}
    model.eval()
    text = F.normalize(torch.randn(3, model.clip.embed_dim), dim=-1)
    probs, assignment = model.segment(torch.randn(1, 3, 32, 32), text)
    assert probs.shape == (1, 3, 4, 4) and assignment.max() < 5  # K-means at inference


# ---- item 9: Eq. 2 and DINO's recipe ------------------------------------------------------------------
def test_paper_config_is_eq2_and_the_dino_config_only_switches_the_recipe():
    paper = load_config(os.path.join(REPO, "configs", "vil_seg", "vil_seg_vitb16_cc12m.yaml"))
    v = paper.MODEL.VIL_SEG
    assert (v.VISION_CONTRAST, v.CLUSTER_GRAD_TO_ENCODER, v.PROJECTION_DIM, v.NUM_CLUSTERS) == ("eq2", False, 2048, 25)
    assert (paper.INPUT.VIL_SEG.NUM_LOCAL, paper.INPUT.VIL_SEG.LOCAL_SIZE) == (6, 96)
    assert tuple(paper.INPUT.VIL_SEG.LOCAL_SCALE) == (0.05, 0.14)  # SwAV's, the paper's reference [3]
    dino = load_config(os.path.join(REPO, "configs", "vil_seg", "vil_seg_vitb16_cc12m_dino.yaml"))
    assert dino.MODEL.VIL_SEG.VISION_CONTRAST == "dino"
    assert (tuple(dino.INPUT.VIL_SEG.GLOBAL_SCALE), tuple(dino.INPUT.VIL_SEG.LOCAL_SCALE)) == ((0.4, 1.0), (0.05, 0.4))
    for key in ("VISION_CONTRAST", "TEACHER_MOMENTUM", "TEACHER_TEMP", "STUDENT_TEMP", "CENTER_MOMENTUM"):
        setattr(dino.MODEL.VIL_SEG, key, getattr(paper.MODEL.VIL_SEG, key))
    dino.INPUT.VIL_SEG.GLOBAL_SCALE, dino.INPUT.VIL_SEG.LOCAL_SCALE = paper.INPUT.VIL_SEG.GLOBAL_SCALE, \
        paper.INPUT.VIL_SEG.LOCAL_SCALE
    dino.OUTPUT_DIR = paper.OUTPUT_DIR
    assert dino.dump() == paper.dump()  # nothing else differs


def _np_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_eq2_vision_contrast_is_plain_softmax_distillation():
    torch.manual_seed(0)
    head = MultiCropDistillation(4, 6, teacher_temp=1.0, student_temp=1.0, centering=False).train()
    glob = torch.randn(3, 4, requires_grad=True)
    local = torch.randn(2, 3, 4, requires_grad=True)
    loss = head(glob, local)
    w, b = head.proj.weight.detach().numpy(), head.proj.bias.detach().numpy()

    def probs(x):
        x = x.detach().numpy()
        return _np_softmax((x / np.linalg.norm(x, axis=-1, keepdims=True)) @ w.T + b)

    target = probs(glob)
    ref = np.mean([-(target * np.log(probs(local[v]))).sum(-1).mean() for v in range(2)])
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    loss.backward()
    assert glob.grad is None and local.grad.abs().sum() > 0  # the global view is the (fixed) target
    assert head.center.abs().sum() == 0  # no centring

    model = build_model(_tiny_cfg())
    assert model.vision_contrast.centering is False
    assert (model.vision_contrast.teacher_temp, model.vision_contrast.student_temp) == (1.0, 1.0)
    assert not hasattr(model, "teacher_visual")


def test_dino_teacher_momentum_and_ema_by_hand():
    for step, total, expected in [(0, 100, 0.996), (50, 100, 0.998), (100, 100, 1.0), (25, 100, None)]:
        if expected is None:
            expected = 1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2
        assert dino_teacher_momentum(step, total, 0.996) == pytest.approx(expected, abs=1e-12)
    teacher, student = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    t0, s0 = teacher.weight.detach().clone(), student.weight.detach().clone()
    ema_update_(teacher, student, 0.9)
    assert torch.allclose(teacher.weight, 0.9 * t0 + 0.1 * s0)


def test_dino_switch_trains_against_an_ema_teacher():
    cfg = _tiny_cfg("MODEL.VIL_SEG.VISION_CONTRAST", "dino")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert model.vision_contrast.centering and (model.vision_contrast.teacher_temp,
                                                model.vision_contrast.student_temp) == (0.04, 0.1)
    assert not any(p.requires_grad for p in model.teacher_visual.parameters())
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    sum(model(_batch()).values()).backward()
    # step 0 copies the student into the teacher
    student_w = model.clip.model.visual.conv1.weight
    assert torch.equal(model.teacher_visual.conv1.weight, student_w.detach())
    assert model.teacher_visual.conv1.weight.grad is None
    assert model.vision_contrast.center.abs().sum() > 0  # centring updated
    opt.step()
    t_before, s_after = model.teacher_visual.conv1.weight.detach().clone(), student_w.detach().clone()
    assert not torch.equal(t_before, s_after)
    model(_batch(seed=1))
    m = dino_teacher_momentum(1, 10, 0.996)
    assert torch.allclose(model.teacher_visual.conv1.weight, m * t_before + (1 - m) * s_after, atol=1e-7)
    assert int(model.teacher_step) == 2


# ---- item 10: self-training -------------------------------------------------------------------------
def test_pseudo_labels_keep_the_most_confident_pixels_of_each_class():
    """Two 2 x 3 images, 3 classes; pseudo-labels for classes 1 and 2, the top half of each."""
    pred = [torch.tensor([[1, 1, 0], [2, 1, 2]]), torch.tensor([[1, 2, 2], [0, 1, 1]])]
    conf = [torch.tensor([[0.9, 0.5, 0.99], [0.6, 0.7, 0.8]]), torch.tensor([[0.4, 0.35, 0.7], [0.95, 0.6, 0.55]])]
    # class 1: confidences 0.9 0.5 0.7 0.4 0.6 0.55 -> top ceil(3) = 0.9, 0.7, 0.6
    # class 2: 0.6 0.8 0.35 0.7 -> top 2 = 0.8, 0.7; class 0 is not selected
    expected = [np.array([[1, 255, 255], [255, 1, 2]]), np.array([[255, 255, 2], [255, 1, 255]])]
    probs = []
    for p, c in zip(pred, conf):  # (3, 2, 3) probabilities whose argmax / max are pred / conf
        x = ((1 - c) / 2).unsqueeze(0).repeat(3, 1, 1)
        probs.append(x.scatter(0, p.unsqueeze(0), c.unsqueeze(0)))
    selector = ConfidentPixelSelector(3, [1, 2], fraction=0.5)
    quantised = [quantize_confidence(p) for p in probs]
    for (pr, level), p in zip(quantised, pred):
        assert torch.equal(pr, p)
        selector.add(pr, level)
    thresholds = selector.thresholds()
    assert thresholds[0] == selector.levels  # not selected: nothing kept
    for (pr, level), want in zip(quantised, expected):
        assert np.array_equal(selector.pseudo_label(pr, level, thresholds, 255).numpy(), want)
    # everything kept with fraction 1; a class never predicted keeps nothing
    everything = ConfidentPixelSelector(4, [1, 3], fraction=1.0)
    for pr, level in quantised:
        everything.add(pr, level)
    th = everything.thresholds()
    assert th[3] == everything.levels
    label = everything.pseudo_label(quantised[0][0], quantised[0][1], th)
    assert np.array_equal(label.numpy(), np.where(pred[0].numpy() == 1, 1, 255))
    with pytest.raises(ValueError, match="fraction"):
        ConfidentPixelSelector(3, [1], fraction=0.0)


def test_self_training_loss_is_pixel_cross_entropy():
    torch.manual_seed(0)
    pixel = torch.randn(1, 4, 2, 2)
    text = F.normalize(torch.randn(3, 4), dim=-1)
    targets = torch.tensor([[[0, 2], [255, 1]]])
    loss = pixel_cross_entropy(pixel, text, torch.tensor(10.0), targets)
    e = pixel[0].numpy().reshape(4, -1).T
    logits = 10 * (e / np.linalg.norm(e, axis=1, keepdims=True)) @ text.numpy().T  # (4 pixels, 3)
    logp = np.log(_np_softmax(logits))
    ref = -(logp[0, 0] + logp[1, 2] + logp[3, 1]) / 3
    assert loss.item() == pytest.approx(ref, rel=1e-5)


def test_self_training_tool_labels_and_fine_tunes(tmp_path):
    """tools/vil_seg_self_train.py end to end on a tiny model: pseudo-labels of the unseen class
    from a checkpoint, written and registered, then two fine-tuning iterations and the evaluation."""
    import sys

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import vil_seg_self_train

    register_tiny("vilseg_st_target", str(tmp_path / "target"), n=4, unseen=["blue sky"])
    opts = ["MODEL.CLIP.NAME", "ovss-tiny-vit", "MODEL.DEVICE", "cpu", "MODEL.VIL_SEG.PROJECTION_DIM", "32",
            "MODEL.VIL_SEG.NUM_CLUSTERS", "5", "DATASETS.TEST", "('vilseg_st_target',)",
            "INPUT.MIN_SIZE_TEST", "48", "INPUT.MAX_SIZE_TEST", "128", "INPUT.MIN_SIZE_TRAIN", "(48,)",
            "INPUT.CROP.SIZE", "(32, 32)", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "2",
            "SOLVER.WARMUP_ITERS", "0", "SOLVER.BASE_LR", "0.001", "DATALOADER.NUM_WORKERS", "0",
            "MODEL.CLIP.FREEZE_TEXT", "True", "SOLVER.AMP.ENABLED", "False", "OUTPUT_DIR", str(tmp_path / "st")]
    config = os.path.join(REPO, "configs", "vil_seg", "vil_seg_vitb16_self_training_voc.yaml")
    cfg = load_config(config, opts)
    weights = str(tmp_path / "start.pth")
    torch.manual_seed(0)
    start = build_model(cfg)
    torch.save({"model": start.state_dict()}, weights)

    list_file = vil_seg_self_train.main(["--config-file", config, "--weights", weights, "--images",
                                         "vilseg_st_target", "--fraction", "0.5", "--pseudo-labels-only", *opts])
    spec = json.load(open(list_file))
    assert len(spec["records"]) == 4
    unseen = spec["classes"].index("blue sky")
    labels = [np.array(Image.open(r["sem_seg_file_name"])) for r in spec["records"]]
    assert set(np.unique(np.concatenate([x.ravel() for x in labels]))) <= {unseen, 255}
    stats = json.load(open(tmp_path / "st" / "pseudo_label_thresholds.json"))["blue sky"]
    # at least half (ties included) of the pixels predicted "blue sky" were kept
    assert stats["predicted_pixels"] * 0.5 <= stats["pseudo_labelled_pixels"] <= stats["predicted_pixels"]

    # fine-tuning (pseudo-labels of every class, so that a random model surely has some)
    res = vil_seg_self_train.main(["--config-file", config, "--weights", weights, "--images", "vilseg_st_target",
                                   "--classes", "all", *opts])
    assert "sem_seg" in res and "mIoU" in res["sem_seg"]
    with open(tmp_path / "st" / "metrics.json") as fh:
        metrics = [json.loads(line) for line in fh if "total_loss" in line]
    # one loss (detectron2 then logs only its total): the pseudo-label cross-entropy, no caption loss
    assert metrics and metrics[-1]["total_loss"] > 0 and "loss_cross" not in metrics[-1]
    final = torch.load(tmp_path / "st" / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert not torch.equal(final["clip.model.visual.conv1.weight"],
                           start.state_dict()["clip.model.visual.conv1.weight"])
