"""Toy training does its job: each method's toy config, trained for a few iterations on a small
ToyWorld, beats the same model with its initial weights (a random head / decoder / student on the
briefly trained tiny CLIP of the session).

The margins were measured once (MEASURED) and each required gain is about half of it; a loss whose
sign is flipped trains SED away from the labels and must fail the same requirement (the negative
control). ZeroSeg trains without labels, so what it is required to learn is its own objective on
images it never trained on (the distillation loss against the teacher); and
its segments must not collapse (issue 16): the toy config's coverage matching must keep apart the
groups an image uses, and the paper's nearest-cell matching, which collapses them, must fail that
same test (its negative control)."""
import os
import sys
from typing import Dict

import pytest
import torch
from detectron2.utils.env import seed_all_rng

from ovss_d2.toyworld import register_toyworld
from ovss_d2.engine import OVSSTrainer, load_config
from ovss_d2.engine.teacher_features import build_teacher_cache

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))
from zeroseg_diagnostics import collapse_statistics  # noqa: E402

# method -> (toy config, training set, iterations, metric on twl_val, required gain over untrained,
# overrides that keep the run short: SED and ERR-Seg at ToyWorld's own 128 px instead of 256)
CASES = {
    "sed": ("sed_toy.yaml", "twl_train", 60, "pACC", 2.0,
            ["MODEL.SED.CLIP_RESOLUTION", "(128, 128)", "SOLVER.IMS_PER_BATCH", "8", "INPUT.MIN_SIZE_TEST", "128"]),
    "err_seg": ("err_seg_toy.yaml", "twl_train", 60, "pACC", 5.0,
                ["MODEL.ERR_SEG.CLIP_RESOLUTION", "(128, 128)", "MODEL.ERR_SEG.TEST_RESOLUTION", "(128, 128)",
                 "SOLVER.IMS_PER_BATCH", "8", "INPUT.MIN_SIZE_TEST", "128"]),
    "zeroseg": ("zeroseg_toy.yaml", "twl_unlabeled_train", 200, "loss_distill", None, []),
    "vil_seg": ("vil_seg_toy.yaml", "twl_captions_train", 40, "pACC", 12.0, []),
}
# untrained -> trained, measured once on this machine (pixel accuracy %; ZeroSeg: its held-out
# distillation loss, required to fall below ZEROSEG_LOSS_RATIO x the untrained one)
MEASURED = {"sed": (12.0, 16.3), "err_seg": (9.4, 20.3), "vil_seg": (2.2, 26.1), "zeroseg": (0.7425, 0.2686),
            "sed, sign-flipped BCE": (12.0, 2.1)}
ZEROSEG_LOSS_RATIO = 0.68
# ZeroSeg's collapse statistics (tools/zeroseg_diagnostics.py) over the first 30 twl_val images after
# 200 iterations. Every matching pulls the segments together during the 50-iteration warm-up
# (docs/methods/zeroseg.md); a run short enough to end there cannot tell them apart. Measured at 200
# (used-segment cosine, groups told apart per image), with issue 25's MAE schedule and
# initialisation: coverage 0.38, 1.93; nearest 0.984, 1.03 (two threads); before them coverage
# 0.52, 1.83, nearest 0.9996, 1.00, coverage with seeds 1-4 0.51-0.78, 1.30-2.00 (one thread).
# Required: the cosine target and, on average, at least 1.2 groups told apart per image (a
# collapsed model has exactly 1).
ZEROSEG_STATS_IMAGES = 30
ZEROSEG_DIVERSE = {"used_segment_cosine": 0.9, "distinct_groups": 1.2}
SEG_METHODS = [m for m, case in CASES.items() if case[4] is not None]


@pytest.fixture(scope="module")
def toy_clip(small_tiny_clip):
    root, clip = small_tiny_clip
    register_toyworld(root, prefix="twl")
    return clip


def _cfg(method: str, clip: str, out: str, extra=()):
    config, train_set, iters, _, _, short = CASES[method]
    opts = ["DATASETS.TRAIN", f"('{train_set}',)", "DATASETS.TEST", "('twl_val',)", "SOLVER.MAX_ITER", str(iters),
            "SOLVER.CHECKPOINT_PERIOD", "100000", "TEST.EVAL_PERIOD", "0", "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", out] + short
    if method != "vil_seg":  # ViL-Seg learns its own CLIP from scratch
        opts += ["MODEL.CLIP.PRETRAINED", clip]
    return load_config(os.path.join(REPO, "configs", "toy", config), opts + list(extra))


def _untrained_and_trained(method: str, clip: str, tmp_path, extra=()):
    metric = CASES[method][3]
    cfg = _cfg(method, clip, str(tmp_path), extra)
    seed_all_rng(0)  # the same initial weights in both models, whatever ran before
    untrained = OVSSTrainer.test(cfg, OVSSTrainer.build_model(cfg).eval())["sem_seg"][metric]
    seed_all_rng(0)
    trainer = OVSSTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    trained = OVSSTrainer.test(cfg, trainer.model.eval())["sem_seg"][metric]
    return untrained, trained


@pytest.mark.parametrize("method", SEG_METHODS)
def test_toy_training_beats_the_untrained_model(method, toy_clip, tmp_path):
    untrained, trained = _untrained_and_trained(method, toy_clip, tmp_path)
    gain = CASES[method][4]
    assert trained >= untrained + gain, (method, untrained, trained)


def test_a_sign_flipped_loss_does_not_pass(toy_clip, tmp_path, monkeypatch):
    """The negative control of the test above: SED with its BCE negated must fail the threshold."""
    from ovss_d2.modeling import losses

    bce = losses.one_hot_bce_with_logits  # looked up by the meta-architecture at every call
    monkeypatch.setattr(losses, "one_hot_bce_with_logits", lambda *a, **k: -bce(*a, **k))
    untrained, trained = _untrained_and_trained("sed", toy_clip, tmp_path)
    assert trained < untrained + CASES["sed"][4], (untrained, trained)


@pytest.fixture(scope="module")
def zeroseg_teacher_cache(toy_clip, tmp_path_factory):
    """The teacher's 30 views of every unlabeled training image, computed once for the ZeroSeg runs
    (an iteration then takes about a quarter of the time)."""
    out = str(tmp_path_factory.mktemp("zeroseg_teacher"))
    assert build_teacher_cache(_cfg("zeroseg", toy_clip, str(tmp_path_factory.mktemp("unused"))), out,
                               progress=False)
    return out


@pytest.fixture(scope="module")
def zeroseg_runs(toy_clip, zeroseg_teacher_cache, tmp_path_factory):
    """matching -> {loss before / after, collapse statistics}: ZeroSeg's toy config trained for
    CASES["zeroseg"]'s iterations with that segment matching, each run once per module."""
    runs = {}

    def run(matching: str) -> Dict:
        if matching not in runs:
            cfg = _cfg("zeroseg", toy_clip, str(tmp_path_factory.mktemp(f"zeroseg_{matching}")),
                       ["MODEL.ZEROSEG.MATCHING", matching, "MODEL.ZEROSEG.TEACHER_CACHE", zeroseg_teacher_cache])
            held_out = cfg.clone()
            held_out.defrost()
            held_out.DATASETS.TRAIN = ("twl_val",)  # never trained on: the same mapper, other images
            held_out.MODEL.ZEROSEG.TEACHER_CACHE = ""  # teacher computed on the fly
            batch = next(iter(OVSSTrainer.build_train_loader(held_out)))

            def distill_loss(model):
                torch.manual_seed(0)  # the same masked patches and Gumbel noise for both models
                with torch.no_grad():
                    return model.losses(batch)["loss_distill"].item()

            seed_all_rng(0)
            trainer = OVSSTrainer(cfg)
            trainer.resume_or_load(resume=False)
            untrained = distill_loss(trainer.model)
            trainer.train()
            stats = collapse_statistics(cfg, trainer.model, "twl_val", limit=ZEROSEG_STATS_IMAGES)
            runs[matching] = {"loss": (untrained, distill_loss(trainer.model)), "collapse": stats}
        return runs[matching]

    return run


def test_zeroseg_training_lowers_its_distillation_loss_on_unseen_images(zeroseg_runs):
    untrained, trained = zeroseg_runs("coverage")["loss"]  # the toy config's matching
    assert trained < ZEROSEG_LOSS_RATIO * untrained, (untrained, trained)


def _diverse(stats: Dict) -> bool:
    return (stats["used_segment_cosine"] < ZEROSEG_DIVERSE["used_segment_cosine"]
            and stats["distinct_groups"] >= ZEROSEG_DIVERSE["distinct_groups"])


def test_zeroseg_segments_do_not_collapse(zeroseg_runs):
    """The toy config (coverage matching) past its warm-up: the groups that take pixels hold
    segment embeddings that differ, so an image gets more than one label."""
    stats = zeroseg_runs("coverage")["collapse"]
    assert _diverse(stats), stats


def test_the_papers_matching_collapses_and_fails_the_diversity_test(zeroseg_runs):
    """The negative control of the test above: Eq. 1's nearest-cell matching, whose loss is zero
    when every segment equals one cell, collapses the segments in the same run and must fail."""
    stats = zeroseg_runs("nearest")["collapse"]
    assert not _diverse(stats), stats
