"""train_net.py and configs (issue 28, items 4, 5 and 16): --eval-only never evaluates random
trainable layers by accident; --resume with a changed config applies it and names the keys that
changed; an empty config, a _BASE_ loop and SOLVER.IMS_PER_BATCH 0 are one clear line each."""
import logging
import os

import pytest
import torch

from helpers import REPO, log_records, register_tiny_splits, train_args, train_worker
from ovss_d2.engine import load_config, setup

BASE = os.path.join(REPO, "configs", "Base-OVSS.yaml")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny_data"))
    register_tiny_splits(root)
    return root


# ---- item 4: --eval-only without weights ------------------------------------------------------------------
def test_eval_only_without_weights_is_refused_for_a_trainable_model(data_root, tmp_path):
    import train_net

    args = train_args(str(tmp_path / "a"))  # the tiny baseline with a trainable image encoder
    args.eval_only = True
    with pytest.raises(ValueError, match="trainable parts.*MODEL.WEIGHTS none to evaluate the untrained model"):
        train_net.main(args)
    assert not os.path.exists(tmp_path / "a" / "inference")  # refused before any evaluation
    # the explicit override evaluates the initial model
    args = train_args(str(tmp_path / "b"), extra=("MODEL.WEIGHTS", "none"))
    args.eval_only = True
    assert "mIoU" in train_net.main(args)["sem_seg"]


def test_eval_only_of_a_training_free_model_needs_no_weights(data_root, tmp_path):
    import train_net

    args = train_args(str(tmp_path), extra=("MODEL.CLIP.FREEZE_IMAGE", "True"))
    args.eval_only = True
    assert "mIoU" in train_net.main(args)["sem_seg"]


# ---- item 5: --resume with another config --------------------------------------------------------------
def _optimizer_and_scheduler(path):
    trainer = torch.load(path, map_location="cpu", weights_only=True)["trainer"]
    return trainer["_trainer"]["optimizer"], trainer["hooks"]["LRScheduler"]


def test_resume_with_a_changed_learning_rate_uses_it_and_names_the_keys(data_root, tmp_path):
    """A run of 3 iterations at SOLVER.BASE_LR 0.01, resumed to 6 at 0.002: the resumed iterations
    run at 0.002 (constant schedule: no warm-up, steps far away), as config.yaml says, and one
    warning names both changed keys with both values."""
    out = str(tmp_path / "run")
    constant = ("SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.STEPS", "(100,)")
    train_worker(data_root, train_args(out, iters=3, extra=constant))
    opt, sched = _optimizer_and_scheduler(os.path.join(out, "model_final.pth"))
    assert {g["lr"] for g in opt["param_groups"]} == {0.01} and set(sched["base_lrs"]) == {0.01}
    changed = constant + ("SOLVER.BASE_LR", "0.002")
    with log_records("ovss_d2.engine.resume") as logged:
        train_worker(data_root, train_args(out, iters=6, resume=True, extra=changed))
    warned = [r.getMessage() for r in logged if r.levelno >= logging.WARNING]
    assert len(warned) == 1, warned
    assert "SOLVER.BASE_LR: 0.01 in the checkpoint, 0.002 now" in warned[0]
    assert "SOLVER.MAX_ITER: 3 in the checkpoint, 6 now" in warned[0] and "current values are used" in warned[0]
    opt, sched = _optimizer_and_scheduler(os.path.join(out, "model_final.pth"))
    assert {g["lr"] for g in opt["param_groups"]} == {0.002} and set(sched["base_lrs"]) == {0.002}
    assert {g["initial_lr"] for g in opt["param_groups"]} == {0.002}
    assert torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["iteration"] == 5


def test_resume_with_the_same_config_warns_nothing(data_root, tmp_path):
    out = str(tmp_path / "run")
    train_worker(data_root, train_args(out, iters=3))
    with log_records("ovss_d2.engine.resume") as logged:
        train_worker(data_root, train_args(out, iters=3, resume=True))
    assert not [r for r in logged if r.levelno >= logging.WARNING]


# ---- item 16: configs and solver values that used to end in a traceback -------------------------------------
BAD_CONFIGS = {  # files written (the first is loaded) -> (error, words of its one-line message)
    "empty": ({"empty.yaml": ""},
              ValueError, r"empty.yaml is empty: give a config such as configs/toy/sed_toy.yaml"),
    "base names itself": ({"self.yaml": '_BASE_: "self.yaml"'},
                          ValueError, r"self.yaml inherits from itself: _BASE_ chain .*self.yaml -> .*self.yaml\. "),
    "base loop": ({"a.yaml": '_BASE_: "b.yaml"', "b.yaml": f'_BASE_: ["{BASE}", "a.yaml"]'},
                  ValueError, r"a.yaml inherits from itself: _BASE_ chain .*a.yaml -> .*b.yaml -> .*a.yaml"),
    "missing base": ({"child.yaml": '_BASE_: "gone.yaml"\nSEED: 3'},
                     FileNotFoundError, r"gone.yaml' \(the _BASE_ of .*child.yaml\) not found"),
    "a list": ({"list.yaml": "- 1\n- 2"}, ValueError, "list.yaml holds a YAML list, not a mapping"),
    "python tag": ({"obj.yaml": "SEED: !!python/object/apply:os.getcwd []"}, ValueError, "obj.yaml is not plain YAML"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_files_are_one_line(tmp_path, case):
    files, error, words = BAD_CONFIGS[case]
    for name, text in files.items():
        (tmp_path / name).write_text(text + "\n")
    with pytest.raises(error, match=words) as info:
        load_config(str(tmp_path / next(iter(files))))
    assert "\n" not in str(info.value)


def test_a_base_reached_by_two_paths_is_no_loop(tmp_path):
    (tmp_path / "left.yaml").write_text(f'_BASE_: "{BASE}"\n')
    (tmp_path / "both.yaml").write_text(f'_BASE_: ["{BASE}", "left.yaml"]\nSEED: 7\n')
    assert load_config(str(tmp_path / "both.yaml")).SEED == 7


@pytest.mark.parametrize("batch", ["0", "-2"])
def test_images_per_batch_must_be_positive(data_root, tmp_path, batch):
    with pytest.raises(ValueError, match=f"SOLVER.IMS_PER_BATCH {batch} must be a positive whole number"):
        setup(train_args(str(tmp_path), extra=("SOLVER.IMS_PER_BATCH", batch)))
    args = train_args(str(tmp_path), extra=("SOLVER.IMS_PER_BATCH", batch, "MODEL.WEIGHTS", "none"))
    args.eval_only = True
    setup(args)  # evaluation does not use it
