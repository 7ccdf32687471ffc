import filecmp
import itertools
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from helpers import REPO, param_counts
from ovss_d2.data import CenterCropImageMapper, register_image_folder
from ovss_d2.data.teacher_cache import TeacherFeatureCache
from ovss_d2.engine import OVSSTrainer, load_config
from ovss_d2.engine.teacher_features import build_teacher_cache
from ovss_d2.modeling.backbones import masked_patch_mse
from ovss_d2.modeling.backbones.masked_vit import random_keep_indices
from ovss_d2.modeling.distillation import (coverage_matching_loss, grid_boxes, local_view_mask, multi_scale_views,
                                           one_to_one_matching_loss, reverse_matching_loss, segment_matching_loss,
                                           token_cell_overlap)
from ovss_d2.modeling.grouping import (compose_assignments, distinct_embeddings, group_oracle_labels,
                                       mean_pairwise_cosine, segment_statistics, straight_through_assign)


def zeroseg_cfg(config="toy/zeroseg_toy.yaml", *extra):
    return load_config(os.path.join(REPO, "configs", config), [
        "MODEL.CLIP.PRETRAINED", "none", "MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
        *extra])


@pytest.fixture(scope="module")
def tiny_zeroseg():
    torch.manual_seed(0)
    return OVSSTrainer.build_model(zeroseg_cfg())


def test_segment_matching_by_hand_never_matches_whole_image():
    grids = [1, 2]  # view 0 = whole image, views 1..4 = the 2x2 cells
    mask = local_view_mask(grids)
    assert mask.tolist() == [False, True, True, True, True]
    segments = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (B=1, G=2, D=2)
    views = torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]])
    # segment 1: the whole image (distance 0) is excluded; nearest cell (0.6, 0.8): (0.4 + 0.8) / 2 = 0.6
    # segment 2: cell (0, 1), distance 0. Summed over segments: 0.6
    assert segment_matching_loss(segments, views[:, mask]).item() == pytest.approx(0.6)
    assert segment_matching_loss(segments, views).item() == pytest.approx(0.0)  # what excluding prevents


def test_model_matching_uses_grid_cells_only(tiny_zeroseg, monkeypatch):
    monkeypatch.setattr(tiny_zeroseg, "matching", "nearest")  # the paper's Eq. 1 (the toy config: coverage)
    v = len(tiny_zeroseg.local_views)
    assert v == 30 and not tiny_zeroseg.local_views[0] and tiny_zeroseg.local_views[1:].all()
    d = tiny_zeroseg.clip.embed_dim
    segments = F.normalize(torch.randn(2, 8, d), dim=-1)
    teacher = F.normalize(torch.randn(2, v, d), dim=-1)
    teacher[:, 0] = segments[:, 0]  # the whole-image view equals a segment: must not count as a match
    dist = (segments[:, :, None] - teacher[:, None, 1:]).abs().mean(-1).min(-1).values.sum(-1).mean()
    assert tiny_zeroseg.segment_matching({"segments": segments}, teacher).item() == pytest.approx(
        dist.item(), rel=1e-6)


@pytest.mark.parametrize("size", [(224, 224), (37, 53)])
def test_grid_cells_tile_the_image(size):
    h, w = size
    boxes = grid_boxes(h, w, [1, 2, 3, 4])
    assert len(boxes) == 30
    start = 0
    for g in (1, 2, 3, 4):
        cover = np.zeros((h, w), int)
        for y0, y1, x0, x1 in boxes[start:start + g * g]:
            assert y1 > y0 and x1 > x0
            cover[y0:y1, x0:x1] += 1
        assert (cover == 1).all(), f"grid {g} leaves gaps or overlaps"
        start += g * g


def test_views_are_the_cells():
    image = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    views = multi_scale_views(image, [1, 2], size=8)
    assert views.shape == (2, 5, 3, 8, 8)
    assert torch.equal(views[:, 0], image)
    cells = [(0, 4, 0, 4), (0, 4, 4, 8), (4, 8, 0, 4), (4, 8, 4, 8)]  # raster order
    small = multi_scale_views(image, [2], size=4)  # 4x4 cells at 4x4: no resampling
    for k, (y0, y1, x0, x1) in enumerate(cells):
        assert torch.equal(small[:, k], image[..., y0:y1, x0:x1])


def test_masking_keeps_the_configured_fraction():
    torch.manual_seed(1)
    keep = random_keep_indices(3, 196, 0.6)
    assert keep.shape == (3, 78)  # 40% of 196 patches
    for row in keep:
        assert len(set(row.tolist())) == 78 and row.tolist() == sorted(row.tolist())
    assert not torch.equal(keep[0], keep[1])  # drawn per image


def test_reconstruction_loss_counts_masked_patches_only():
    images = torch.randn(1, 3, 4, 4)
    # patches of 2x2 in raster order, pixels (row, col, channel): built by hand
    target = torch.stack([images[0, :, r:r + 2, c:c + 2].permute(1, 2, 0).reshape(-1)
                          for r in (0, 2) for c in (0, 2)])[None]
    keep = torch.tensor([[0, 3]])  # patches 1 and 2 are masked
    pred = target.clone()
    pred[0, 0] += 100.0
    pred[0, 3] -= 50.0  # errors on visible patches do not count
    assert masked_patch_mse(pred, images, keep, 2, norm_pix=False).item() == pytest.approx(0.0, abs=1e-10)
    pred[0, 1] += 1.0  # a unit error on every pixel of one of the two masked patches
    assert masked_patch_mse(pred, images, keep, 2, norm_pix=False).item() == pytest.approx(0.5)


def test_straight_through_assignment_is_one_hot_with_soft_gradient():
    logits = torch.randn(2, 5, 7, requires_grad=True)
    hard = straight_through_assign(logits, dim=1)
    assert ((hard == 0) | (hard == 1)).all() and torch.equal(hard.sum(1), torch.ones(2, 7))
    w = torch.randn(2, 5, 7)
    (g_hard,) = torch.autograd.grad((hard * w).sum(), logits)
    (g_soft,) = torch.autograd.grad((logits.softmax(1) * w).sum(), logits)
    assert torch.allclose(g_hard, g_soft, atol=1e-6)


def test_every_pixel_in_exactly_one_final_group(tiny_zeroseg):
    model = tiny_zeroseg.eval()
    image = torch.randn(3, 48, 72)
    with torch.no_grad():
        enc = model.encoder(image[None], 0.0)
        out = model.head(enc["tokens"])
        hard = [a["hard"] for a in out["assignments"]]
        assert [h.shape for h in hard] == [(1, 16, 6 * 9), (1, 8, 16)]
        final = compose_assignments(hard)  # (1, 8, L): token -> final group
        assert torch.equal(final.sum(1), torch.ones(1, 6 * 9)) and ((final == 0) | (final == 1)).all()
        seg = model.segment(image)
    groups = seg["groups"]
    assert groups.shape == (48, 72) and groups.dtype == torch.int64
    assert groups.min() >= 0 and groups.max() < 8


def test_background_threshold_and_group_labels(tiny_zeroseg):
    model = tiny_zeroseg.eval()
    model.set_vocabulary(["background", "cat", "dog"])
    d = model.clip.embed_dim
    text = torch.zeros(2, 1, d)
    text[0, 0, 0], text[1, 0, 1] = 1.0, 1.0  # "cat" = e0, "dog" = e1
    groups = torch.zeros(16, 16, dtype=torch.long)
    groups[:, 8:] = 1
    groups[8:, :8] = 2
    segments = torch.zeros(3, d)
    segments[0, 0] = 1.0  # group 0: clearly cat
    segments[1, 1] = 1.0  # group 1: clearly dog
    segments[2, :2] = torch.tensor([1.0, 0.98])  # group 2: undecided (p(cat) = 1 / (1 + e^-2) = 0.88)
    model.segment = lambda image: {"segments": segments, "global": segments[0] + segments[1], "groups": groups}
    model.class_embeddings = lambda names: text
    model.background_threshold = 0.95
    try:
        out = model([{"image": torch.zeros(3, 16, 16, dtype=torch.uint8)}])[0]["sem_seg"]
    finally:
        del model.segment, model.class_embeddings
    labels = out.argmax(0)
    expected = torch.full((16, 16), 2)  # dog on the right half
    expected[:, :8] = 1  # cat
    expected[8:, :8] = 0  # the undecided group falls below 0.95: background
    assert torch.equal(labels, expected)
    assert out.shape == (3, 16, 16)


def test_training_step_gives_all_losses(tiny_zeroseg):
    model = tiny_zeroseg.train()
    batch = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8)} for _ in range(2)]
    losses = model(batch)
    assert set(losses) == {"loss_distill", "loss_matching", "loss_reconstruction"}
    sum(losses.values()).backward()
    assert model.head.group_tokens[0].grad.abs().sum() > 0 and model.decoder.mask_token.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.clip.parameters())  # the teacher is frozen
    with pytest.raises(ValueError, match="CenterCropImageMapper"):
        model([{"image": torch.zeros(3, 80, 64, dtype=torch.uint8)}])
    model.zero_grad(set_to_none=True)
    model.eval()


def _image_folder(root, n=7):
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = os.path.join(root, f"n0{i % 2}")
        os.makedirs(sub, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40 + i, 50, 3), dtype=np.uint8)).save(os.path.join(sub, f"{i}.JPEG"))
    with open(os.path.join(root, "n00", "corrupt.JPEG"), "wb") as f:
        f.write(b"not a jpeg")


def test_teacher_cache_resumes_to_identical_files(tmp_path):
    _image_folder(str(tmp_path / "images"))
    register_image_folder("zs_test_folder", str(tmp_path / "images"))
    torch.manual_seed(0)
    teacher = str(tmp_path / "teacher.pt")  # the teacher's weights must be the same in every run
    torch.save(OVSSTrainer.build_model(zeroseg_cfg()).clip.model.state_dict(), teacher)
    cfg = zeroseg_cfg("toy/zeroseg_toy.yaml", "DATALOADER.NUM_WORKERS", "0", "MODEL.CLIP.PRETRAINED", teacher,
                      "MODEL.ZEROSEG.GRIDS", "[1, 2]")
    full, resumed = str(tmp_path / "full"), str(tmp_path / "resumed")
    assert build_teacher_cache(cfg, full, "zs_test_folder", shard_size=3, batch_size=2, progress=False)
    # interrupted after one shard, with a half-written file of a killed run left behind
    assert not build_teacher_cache(cfg, resumed, "zs_test_folder", shard_size=3, batch_size=2, max_shards=1,
                                   progress=False)
    open(os.path.join(resumed, "shard_00001.npy.partial-999"), "wb").write(b"\x93NUMPY partial")
    with pytest.raises(FileNotFoundError, match="cache_teacher_features.py"):
        TeacherFeatureCache(resumed)
    assert build_teacher_cache(cfg, resumed, "zs_test_folder", shard_size=3, batch_size=2, progress=False)
    assert sorted(os.listdir(full)) == ["files", "index.json", "name_lookup", "shard_00000.npy", "shard_00001.npy",
                                        "shard_00002.npy"]
    names = sorted(os.path.relpath(os.path.join(d, f), full) for d, _, fs in os.walk(full) for f in fs)
    assert sorted(os.path.relpath(os.path.join(d, f), resumed) for d, _, fs in os.walk(resumed) for f in fs) == names
    assert all(filecmp.cmp(os.path.join(full, n), os.path.join(resumed, n), shallow=False) for n in names)

    cache = TeacherFeatureCache.for_config(cfg, full)
    assert len(cache) == 8
    mapper = CenterCropImageMapper(is_train=True, size=64, teacher_cache=cache)
    first = mapper({"file_name": cache.description["files"][1]})
    assert first["image"].shape == (3, 64, 64) and first["teacher_features"].shape == (5, 64)
    assert torch.allclose(first["teacher_features"].float().norm(dim=-1), torch.ones(5), atol=2e-3)
    corrupt = cache.description["files"].index(str(tmp_path / "images" / "n00" / "corrupt.JPEG"))
    assert not np.any(cache[cache.description["files"][corrupt]])  # reported and zero, training skips it
    other = zeroseg_cfg("toy/zeroseg_toy.yaml", "MODEL.CLIP.PRETRAINED", teacher)  # grids 1, 2, 3, 4
    with pytest.raises(ValueError, match="grids"):
        TeacherFeatureCache.for_config(other, full)


def test_paper_config_builds_with_documented_parts():
    cfg = zeroseg_cfg("zeroseg/zeroseg_vitb16_in1k.yaml")
    model = OVSSTrainer.build_model(cfg)
    d, L = 768, 12

    def block(c, r=4):  # attention (qkv + proj) + MLP + 2 LayerNorms
        return 4 * c * c + 4 * c + 2 * r * c * c + r * c + c + 4 * c

    assert param_counts(model.encoder)[0] == 16 * 16 * 3 * d + d + L * block(d) + 2 * d
    assert param_counts(model.decoder)[0] == (d * 512 + 512) + 512 + 8 * block(512) + 2 * 512 \
        + (512 * 768 + 768)
    assert len(model.head.stages) == 3 and [len(s) for s in model.head.stages] == [2, 2, 1]
    assert [t.shape[1] for t in model.head.group_tokens] == [32, 8]
    assert model.clip.name == "ViT-L-14" and param_counts(model.clip)[1] == 0
    assert model.head.projector.fc2.out_features == 768  # CLIP ViT-L/14's embedding
    assert model.mask_ratio == 0.6 and model.image_size == 224 and model.grids == [1, 2, 3, 4]


# ---- segment matching variants (not in the paper; MODEL.ZEROSEG.MATCHING, REVERSE_MATCHING_WEIGHT) ----
def _l1(a, b):
    return (F.normalize(a, dim=-1) - b).abs().mean().item()


def test_reverse_and_one_to_one_matching_by_hand():
    views = F.normalize(torch.tensor([[[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]]), dim=-1)  # (1, V'=3, 2)
    collapsed = views[:, [0, 0]].clone()  # both segments equal cell 0
    assert segment_matching_loss(collapsed, views).item() == pytest.approx(0.0)  # Eq. 1 cannot tell
    # reverse: every cell to its nearest segment: 0, d(c1, c0), d(c2, c0); mean over cells x G
    expected = (0 + _l1(views[0, 1], views[0, 0]) + _l1(views[0, 2], views[0, 0])) / 3 * 2
    assert reverse_matching_loss(collapsed, views).item() == pytest.approx(expected, rel=1e-6)
    # one-to-one: the two segments must take different cells; the best pair by brute force
    segments = torch.tensor([[[1.0, 0.1], [0.9, 0.2]]])
    best = min(_l1(segments[0, 0], views[0, i]) + _l1(segments[0, 1], views[0, j])
               for i, j in itertools.permutations(range(3), 2))
    assert one_to_one_matching_loss(segments, views).item() == pytest.approx(best, rel=1e-6)
    assert one_to_one_matching_loss(segments, views).item() > segment_matching_loss(segments, views).item()
    with pytest.raises(ValueError, match="at most as many segments"):
        one_to_one_matching_loss(torch.randn(1, 4, 2), views)


@pytest.mark.parametrize("grid,patch,grids", [((4, 4), 3, [1, 3]), ((6, 5), 4, [1, 2, 4]), ((2, 2), 8, [2])])
def test_token_cell_overlap_against_pixel_masks(grid, patch, grids):
    h, w = grid
    overlap = token_cell_overlap(grid, patch, grids)
    boxes = grid_boxes(h * patch, w * patch, [g for g in grids if g != 1])
    assert overlap.shape == (len(boxes), h * w)
    token = np.arange(h * w).reshape(h, w).repeat(patch, 0).repeat(patch, 1)  # pixel -> its patch token
    for v, (y0, y1, x0, x1) in enumerate(boxes):
        inside = np.bincount(token[y0:y1, x0:x1].reshape(-1), minlength=h * w) / patch ** 2
        assert np.allclose(overlap[v].numpy(), inside)
    n_local = len([g for g in grids if g != 1])
    assert torch.allclose(overlap.sum(0), torch.full((h * w,), float(n_local)))  # each grid tiles the image


def test_coverage_matching_by_hand_and_its_gradient():
    # 4 tokens, one 2x1 grid: tokens 0, 1 in cell 0, tokens 2, 3 in cell 1; token 1 half in each cell
    views = F.normalize(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), dim=-1)  # (1, V'=2, D=2)
    overlap = torch.tensor([[[1.0, 0.5, 0.0, 0.0], [0.0, 0.5, 1.0, 1.0]]])  # (1, V', K=4)
    segments = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (1, G=2, D): segment 0 = cell 0, 1 = cell 1
    logits = torch.zeros(1, 2, 4, requires_grad=True)
    assign = straight_through_assign(logits + torch.tensor([[[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]]]), dim=1)
    loss = coverage_matching_loss(segments, assign, views, overlap)
    d = _l1(segments[0, 0], views[0, 1])  # segment-to-other-cell distance (1.0 here)
    # token 0: 0, token 1 (segment 0, half in cell 1): d / 2, tokens 2, 3: 0 -> mean d / 8, times G = 2
    assert loss.item() == pytest.approx(d / 8 * 2, rel=1e-6)
    loss.backward()
    # token 2 sits in cell 1: the gradient raises its logit for segment 1 relative to segment 0
    assert logits.grad[0, 1, 2] < logits.grad[0, 0, 2]
    # all segments equal to one cell (Eq. 1's zero) costs the distance to the other cell
    collapsed = views[:, [0, 0]].clone()
    assert segment_matching_loss(collapsed, views).item() == pytest.approx(0.0)
    assert coverage_matching_loss(collapsed, assign.detach(), views, overlap).item() > 0.2


@pytest.mark.parametrize("matching,reverse", [("nearest", 0.0), ("one_to_one", 0.0), ("coverage", 0.0),
                                              ("nearest", 1.0)])
def test_matching_switches_train(matching, reverse):
    torch.manual_seed(0)
    model = OVSSTrainer.build_model(zeroseg_cfg("toy/zeroseg_toy.yaml", "MODEL.ZEROSEG.MATCHING", matching,
                                                "MODEL.ZEROSEG.REVERSE_MATCHING_WEIGHT", str(reverse))).train()
    size = model.image_size
    losses = model([{"image": torch.randint(0, 255, (3, size, size), dtype=torch.uint8)} for _ in range(2)])
    assert ("loss_reverse_matching" in losses) == (reverse > 0)
    sum(losses.values()).backward()
    grouping_grad = model.head.grouping[-1].assign.q.weight.grad
    # only the coverage matching reaches the last assignment directly (straight-through): the others
    # reach it through the global branch and the segment values alone
    assert grouping_grad is not None and torch.isfinite(grouping_grad).all()
    assert all(torch.isfinite(v) for v in losses.values())


def test_paper_config_keeps_the_paper_settings():
    cfg = zeroseg_cfg("zeroseg/zeroseg_vitb16_in1k.yaml")
    z = cfg.MODEL.ZEROSEG
    assert z.MATCHING == "nearest" and z.REVERSE_MATCHING_WEIGHT == 0.0 and z.TEACHER_VIEW_SIZE == 0
    assert z.GROUP_NAMING == "segment"
    for name in ("voc_21", "pcontext_60", "coco_object_81"):
        e = zeroseg_cfg(f"zeroseg/eval_zeroseg_vitb16_{name}.yaml").MODEL.ZEROSEG
        assert e.MATCHING == "nearest" and e.TEST_TOPK_CLASSES == 5 and e.BACKGROUND_CAP


# ---- GroupViT's inference rules (switches) -------------------------------------------------------
def _labels_with(model, segments, global_embedding, groups, text, threshold, topk, cap):
    model.segment = lambda image: {"segments": segments, "global": global_embedding, "groups": groups}
    model.class_embeddings = lambda names: text
    model.background_threshold, model.test_topk_classes, model.background_cap = threshold, topk, cap
    try:
        return model([{"image": torch.zeros(3, *groups.shape, dtype=torch.uint8)}])[0]["sem_seg"].argmax(0)
    finally:
        del model.segment, model.class_embeddings


def test_groupvit_rules_are_switches(tiny_zeroseg):
    model = tiny_zeroseg.eval()
    model.set_vocabulary(["background", "cat", "dog", "cow"])
    d = model.clip.embed_dim
    text = torch.zeros(3, 1, d)
    for i in range(3):
        text[i, 0, i] = 1.0
    groups = torch.zeros(8, 8, dtype=torch.long)
    groups[:, 4:] = 1
    segments = torch.zeros(2, d)
    segments[0, :3] = torch.tensor([1.0, 0.99, 0.0])  # cat vs dog undecided: p(cat) = 0.67
    segments[1, :3] = torch.tensor([0.0, 0.97, 1.0])  # cow, p(cow) = 0.90
    saved = model.background_threshold, model.test_topk_classes, model.background_cap
    try:
        # plain threshold 0.99: both groups are below it -> all background
        labels = _labels_with(model, segments, segments.sum(0), groups, text, 0.99, 0, False)
        assert (labels == 0).all()
        # GroupViT's cap: the threshold becomes the best group probability (0.90): cow stays
        labels = _labels_with(model, segments, segments.sum(0), groups, text, 0.99, 0, True)
        assert (labels[:, 4:] == 3).all() and (labels[:, :4] == 0).all()
        # top-1 class of z = cow only: group 0 is renormalised onto cow, times its small p(cow)
        z = torch.zeros(d)
        z[2] = 1.0
        scores = model.group_class_scores(segments, z, text[:, 0])
        model.test_topk_classes = 1
        restricted = model.group_class_scores(segments, z, text[:, 0])
        assert torch.allclose(restricted[:, :2], torch.zeros(2, 2)) and torch.allclose(restricted[:, 2], scores[:, 2])
    finally:
        model.background_threshold, model.test_topk_classes, model.background_cap = saved


# ---- collapse diagnostics -------------------------------------------------------------------------
def test_collapse_statistics_by_hand():
    e = torch.tensor([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    c = 1 / np.sqrt(2)
    assert mean_pairwise_cosine(e) == pytest.approx((0 + c + c) / 3)
    assert mean_pairwise_cosine(e[[0, 0, 0]]) == pytest.approx(1.0)
    groups = torch.tensor([[0, 0, 0], [2, 2, 0]])
    stats = segment_statistics(e, groups)
    assert stats["groups_used"] == 2 and stats["largest_group"] == pytest.approx(4 / 6)
    assert stats["used_segment_cosine"] == pytest.approx(c)
    assert stats["distinct_groups"] == 2  # cosine 0.71 < 0.9: two groups that can be told apart
    assert segment_statistics(e[[0, 0, 0]], groups)["distinct_groups"] == 1  # two groups, one embedding


def test_distinct_embeddings_merges_near_duplicates_transitively():
    angle = lambda deg: [np.cos(np.radians(deg)), np.sin(np.radians(deg))]  # noqa: E731
    # 0 and 20 degrees apart: cosine 0.94 (alike); 20 and 40: alike; 0 and 40: 0.77, joined through 20
    chain = torch.tensor([angle(0), angle(20), angle(40), angle(90)], dtype=torch.float64)
    assert distinct_embeddings(chain) == 2
    assert distinct_embeddings(chain, duplicate_cosine=0.95) == 4
    assert distinct_embeddings(chain[:0]) == 0


def test_oracle_names_each_group_by_its_majority_class():
    groups = torch.tensor([[0, 0, 1, 1],
                           [0, 0, 1, 1],
                           [2, 2, 2, 3]])
    label = torch.tensor([[5, 5, 7, 255],
                          [4, 5, 7, 255],
                          [4, 4, 6, 255]])
    expected = torch.tensor([[5, 5, 7, 7],  # group 0: three 5s, one 4; group 1: 7 (ignored pixels not counted)
                             [5, 5, 7, 7],
                             [4, 4, 4, 255]])  # group 2: two 4s, one 6; group 3: only ignored pixels
    assert torch.equal(group_oracle_labels(groups, label), expected)


def test_fine_toy_config_gives_every_patch_its_own_teacher_cell():
    cfg = zeroseg_cfg("toy/zeroseg_toy_fine.yaml")
    z = cfg.MODEL.ZEROSEG
    assert z.MATCHING == "coverage" and z.TEST_TOPK_CLASSES == 0 and z.TEACHER_CACHE
    side = z.IMAGE_SIZE // z.PATCH_SIZE
    overlap = token_cell_overlap((side, side), z.PATCH_SIZE, z.GRIDS)  # (local views, tokens)
    finest = overlap[-max(z.GRIDS) ** 2:]  # the finest grid's cells
    assert len(overlap) == sum(g * g for g in z.GRIDS if g != 1) == 84
    assert torch.equal(finest, torch.eye(side * side))  # one cell per patch, exactly


def test_teacher_naming_switch_names_groups_by_the_pooled_teacher_map(tiny_zeroseg):
    """GROUP_NAMING teacher (not in the paper): a group is named by the teacher's dense embedding
    averaged over its pixels, the teacher run at TEACHER_NAMING_SIZE; "segment" keeps the paper's."""
    model = tiny_zeroseg.eval()
    model.set_vocabulary(["cat", "dog"])
    d = model.clip.embed_dim
    text = torch.zeros(2, 1, d)
    text[0, 0, 0], text[1, 0, 1] = 1.0, 1.0  # "cat" = e0, "dog" = e1
    groups = torch.zeros(16, 16, dtype=torch.long)
    groups[:, 8:] = 1
    segments = torch.zeros(2, d)
    segments[0, 0], segments[1, 1] = 1.0, 1.0  # the segments say: left cat, right dog
    dense = torch.zeros(1, d, 4, 4)
    dense[:, 1, :, :2], dense[:, 0, :, 2:] = 1.0, 1.0  # the teacher says: left dog, right cat
    seen_sizes = []
    saved = model.group_naming, model.teacher_naming_size
    model.clip.forward_features = lambda x: seen_sizes.append(tuple(x.shape[-2:])) or {"res5": x}
    model.clip.dense_embedding = lambda feats: dense
    try:
        expected = {"segment": torch.tensor([0, 1]), "teacher": torch.tensor([1, 0])}  # left, right columns
        for naming, size in (("segment", 0), ("teacher", 32)):
            model.group_naming, model.teacher_naming_size = naming, size
            labels = _labels_with(model, segments, segments.sum(0), groups, text, 0.5, 0, False)
            assert torch.equal(labels[:, [0, 15]], expected[naming].expand(16, 2)), naming
        assert seen_sizes == [(32, 32)]  # the teacher ran once, on the image resized to 32
        # pooled by hand: the bilinear-upsampled map averaged over each group's pixels
        up = F.interpolate(dense, size=(16, 16), mode="bilinear", align_corners=False)[0].numpy()
        pooled = model.teacher_group_embeddings(torch.zeros(3, 16, 16), groups, 3)
        for g in range(2):
            np.testing.assert_allclose(pooled[g].numpy(), up[:, groups.numpy() == g].mean(1), atol=1e-6)
        assert torch.equal(pooled[2], torch.zeros(d))  # a group without pixels
    finally:
        model.group_naming, model.teacher_naming_size = saved
        del model.clip.forward_features, model.clip.dense_embedding
    with pytest.raises(ValueError, match="GROUP_NAMING"):
        OVSSTrainer.build_model(zeroseg_cfg("toy/zeroseg_toy.yaml", "MODEL.ZEROSEG.GROUP_NAMING", "pooled"))
