import os

import pytest
import torch
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

from helpers import log_records, register_tiny_splits, tiny_cfg, train_args, train_worker
from ovss_d2.engine import OVSSTrainer, build_optimizer, check_datasets, launch


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny_data"))
    register_tiny_splits(root)
    return root


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_same_model(a, b, atol):
    ma, mb = a["model"], b["model"]
    assert ma.keys() == mb.keys()
    for k in ma:
        assert torch.allclose(ma[k].float(), mb[k].float(), atol=atol), k


def test_optimizer_groups_and_clip_factor(data_root, tmp_path):
    cfg = tiny_cfg(str(tmp_path))
    cfg.SOLVER.CLIP_LR_MULTIPLIER = 0.01
    cfg.MODEL.CLIP_BASELINE.LEARN_LOGIT_SCALE = True
    model = OVSSTrainer.build_model(cfg)
    opt = build_optimizer(cfg, model)
    lr_of = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    wd_of = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    base = cfg.SOLVER.BASE_LR
    assert lr_of[id(model.log_logit_scale)] == pytest.approx(base)
    unused = {id(p) for p in model.clip.value_path_parameters()}
    assert unused
    for n, p in model.clip.model.named_parameters():
        if n.startswith("visual.") and id(p) not in unused:
            assert lr_of[id(p)] == pytest.approx(base * 0.01), n
        else:  # frozen text tower: not optimised at all
            assert id(p) not in lr_of and not p.requires_grad, n
    assert wd_of[id(model.clip.model.visual.ln_post.weight)] == cfg.SOLVER.WEIGHT_DECAY_NORM
    assert wd_of[id(model.clip.model.visual.positional_embedding)] == cfg.SOLVER.WEIGHT_DECAY_EMBED
    assert wd_of[id(model.clip.model.visual.conv1.weight)] == cfg.SOLVER.WEIGHT_DECAY


def test_training_free_model_refuses_to_train(data_root, tmp_path):
    cfg = tiny_cfg(str(tmp_path))
    cfg.MODEL.CLIP.FREEZE_IMAGE = True
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer(cfg, OVSSTrainer.build_model(cfg))


def test_unregistered_dataset_is_a_clear_error(tmp_path):
    cfg = tiny_cfg(str(tmp_path), test="no_such_dataset")
    with pytest.raises(KeyError, match="no_such_dataset.*not registered"):
        check_datasets(cfg, "my_config.yaml")


class _Crash(HookBase):
    """Simulates a run killed right after iteration ``at`` (and its checkpoint)."""

    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            raise KeyboardInterrupt("simulated kill")


# detectron2's default schedule, and MAE's (ZeroSeg's) registered by ovss_d2.engine.lr_scheduler
SCHEDULES = {"detectron2": (), "half-cosine": ("SOLVER.LR_SCHEDULER_NAME", "WarmupHalfCosineLR",
                                               "SOLVER.WARMUP_ITERS", "2")}


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_resume_continues_exactly(schedule, data_root, tmp_path):
    full, parts = str(tmp_path / "full"), str(tmp_path / "parts")
    extra = SCHEDULES[schedule]
    train_worker(data_root, train_args(full, iters=6, extra=extra))
    # the interrupted run: same config, killed after iteration 3 (checkpoint period 3)
    cfg = tiny_cfg(parts, iters=6, extra=extra)
    seed_all_rng(cfg.SEED)  # as train_net's default_setup does before building the model
    trainer = OVSSTrainer(cfg)
    trainer.register_hooks([_Crash(at=2)])
    trainer.resume_or_load(resume=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    assert os.path.isfile(os.path.join(parts, "model_0000002.pth"))
    train_worker(data_root, train_args(parts, iters=6, resume=True, extra=extra))
    a = _weights(os.path.join(full, "model_final.pth"))
    b = _weights(os.path.join(parts, "model_final.pth"))
    assert a["iteration"] == b["iteration"] == 5
    _assert_same_model(a, b, atol=1e-6)
    # the optimizer and scheduler states travel with the checkpoint
    opt_a, opt_b = a["trainer"]["_trainer"]["optimizer"], b["trainer"]["_trainer"]["optimizer"]
    assert opt_a["state"] and opt_a["state"].keys() == opt_b["state"].keys()
    for k in opt_a["state"]:
        assert torch.allclose(opt_a["state"][k]["exp_avg_sq"], opt_b["state"][k]["exp_avg_sq"], atol=1e-9)
    assert a["trainer"]["hooks"]["LRScheduler"] == b["trainer"]["hooks"]["LRScheduler"]
    assert a["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == 6  # saved, so a resume continues it


def test_two_cpu_processes_equal_one(data_root, tmp_path):
    one, two = str(tmp_path / "one"), str(tmp_path / "two")
    # SGD: the update is linear in the gradient, so float noise in the all-reduce stays noise
    # (Adam normalises near-zero gradients and would amplify it)
    sgd = ("SOLVER.OPTIMIZER", "SGD", "SOLVER.BASE_LR", "0.1")
    train_worker(data_root, train_args(one, iters=3, batch=2, extra=sgd))
    launch(train_worker, 2, dist_url="auto",
           args=(data_root, train_args(two, iters=3, batch=2, num_gpus=2, extra=sgd)))
    a = _weights(os.path.join(one, "model_final.pth"))
    b = _weights(os.path.join(two, "model_final.pth"))
    assert a["iteration"] == b["iteration"] == 2
    _assert_same_model(a, b, atol=1e-6)  # float rounding of the all-reduce (GETTING_STARTED.md: 2.4e-7 measured)
    # and training changed the weights
    init = OVSSTrainer.build_model(tiny_cfg(str(tmp_path / "x"))).state_dict()
    assert any(not torch.allclose(init[k].float(), a["model"][k].float()) for k in init if k in a["model"])


def test_channels_last_trains_the_same_model(data_root, tmp_path):
    """MODEL.CHANNELS_LAST (the toy configs) stores the convolutions NHWC and changes nothing else:
    the same SED trained with and without it ends at the same weights (float rounding apart), and
    its checkpoint loads into a default model. SGD: Adam would turn the rounding noise of
    near-zero gradients into full-size steps."""
    sed = ("MODEL.META_ARCHITECTURE", "SED", "MODEL.CLIP.NAME", "ovss-tiny-convnext", "MODEL.SED.CLIP_RESOLUTION",
           "(64, 64)", "MODEL.SED.HIDDEN_DIM", "32", "MODEL.SED.DECODER_DIMS", "[16, 16, 16]",
           "MODEL.SED.GUIDANCE_PROJ_DIMS", "[8, 8, 8]", "SOLVER.OPTIMIZER", "SGD")
    runs = {}
    for nhwc in (False, True):
        out = str(tmp_path / str(nhwc))
        train_worker(data_root, train_args(out, iters=3, extra=sed + ("MODEL.CHANNELS_LAST", str(nhwc))))
        runs[nhwc] = _weights(os.path.join(out, "model_final.pth"))
    convs = [v for v in runs[True]["model"].values() if v.dim() == 4 and min(v.shape[1:]) > 1]
    assert convs and all(v.is_contiguous(memory_format=torch.channels_last) and not v.is_contiguous() for v in convs)
    _assert_same_model(runs[False], runs[True], atol=1e-6)  # 1.5e-8 measured
    default = OVSSTrainer.build_model(tiny_cfg(str(tmp_path / "x"), extra=sed))
    default.load_state_dict(runs[True]["model"])
    assert all(p.is_contiguous() for p in default.parameters())


def test_bf16_autocast_on_cpu_trains(data_root, tmp_path):
    out = str(tmp_path / "amp")
    train_worker(data_root, train_args(out, iters=2, extra=("SOLVER.AMP.ENABLED", "True",
                                                            "SOLVER.AMP.DTYPE", "bfloat16")))
    final = _weights(os.path.join(out, "model_final.pth"))["model"]
    assert all(torch.isfinite(v.float()).all() for v in final.values())


def test_fp16_autocast_on_cpu_is_a_clear_error(data_root, tmp_path):
    cfg = tiny_cfg(str(tmp_path))
    cfg.SOLVER.AMP.ENABLED = True
    with pytest.raises(ValueError, match="bfloat16"):
        OVSSTrainer(cfg)


def test_gpu_config_runs_on_cpu_without_fp16_amp():
    import torch

    from ovss_d2.engine import load_config
    from helpers import REPO

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    cfg = load_config(os.path.join(REPO, "configs", "err_seg", "err_seg_convnext_b_640.yaml"), [])
    assert cfg.MODEL.DEVICE == "cpu" and not cfg.SOLVER.AMP.ENABLED


def test_full_model_gradient_clipping(data_root, tmp_path):
    cfg = tiny_cfg(str(tmp_path))
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = True
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "full_model"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = 0.5
    cfg.SOLVER.OPTIMIZER = "SGD"
    cfg.SOLVER.MOMENTUM = 0.0
    cfg.SOLVER.WEIGHT_DECAY = cfg.SOLVER.WEIGHT_DECAY_NORM = cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    cfg.SOLVER.BASE_LR = cfg.SOLVER.CLIP_LR_MULTIPLIER = 1.0
    model = OVSSTrainer.build_model(cfg)
    opt = build_optimizer(cfg, model)
    params = [p for g in opt.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.full_like(p, 3.0)
    opt.step()
    step = torch.cat([(b - p.detach()).flatten() for b, p in zip(before, params)])
    assert step.norm().item() == pytest.approx(0.5, rel=1e-4)  # SGD step = clipped gradient


def test_resume_skips_a_corrupt_last_checkpoint(data_root, tmp_path):
    """A run killed while writing its iteration-5 checkpoint (a truncated model_0000005.pth that
    last_checkpoint names): --resume warns naming it, continues from model_0000002.pth and ends
    with the weights of the uninterrupted run."""
    import logging

    full, parts = str(tmp_path / "full"), str(tmp_path / "parts")
    train_worker(data_root, train_args(full, iters=6))
    cfg = tiny_cfg(parts, iters=6)
    seed_all_rng(cfg.SEED)
    trainer = OVSSTrainer(cfg)
    trainer.register_hooks([_Crash(at=2)])
    trainer.resume_or_load(resume=False)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    intact = open(os.path.join(parts, "model_0000002.pth"), "rb").read()
    with open(os.path.join(parts, "model_0000005.pth"), "wb") as f:
        f.write(intact[: len(intact) // 3])
    with open(os.path.join(parts, "last_checkpoint"), "w") as f:
        f.write("model_0000005.pth")
    with log_records("ovss_d2.checkpoint") as logged:
        train_worker(data_root, train_args(parts, iters=6, resume=True))
    warned = [r.getMessage() for r in logged if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and os.path.join(parts, "model_0000005.pth") in warned[0]
    a = _weights(os.path.join(full, "model_final.pth"))
    b = _weights(os.path.join(parts, "model_final.pth"))
    assert a["iteration"] == b["iteration"] == 5
    _assert_same_model(a, b, atol=1e-6)


def test_eval_only_needs_no_initial_clip_weights(data_root, tmp_path):
    """--eval-only with MODEL.WEIGHTS: MODEL.CLIP.PRETRAINED may name weights this machine lacks
    (the tiny ToyWorld CLIP, not in this test's cache; a deleted file); same metrics as 'none'."""
    out = str(tmp_path / "run")
    train_worker(data_root, train_args(out, iters=2))
    weights = os.path.join(out, "model_final.pth")

    def evaluate(pretrained):
        cfg = tiny_cfg(str(tmp_path / "eval"), extra=("MODEL.WEIGHTS", weights, "MODEL.CLIP.PRETRAINED", pretrained))
        return OVSSTrainer.evaluate(cfg)

    reference = evaluate("none")
    assert evaluate("toyworld") == reference
    assert evaluate(str(tmp_path / "deleted_clip.pt")) == reference
    # and the weights were used: an untrained model scores differently
    assert OVSSTrainer.evaluate(tiny_cfg(str(tmp_path / "untrained"), extra=("MODEL.WEIGHTS", "none"))) != reference


def test_eval_only_refuses_another_models_weights(data_root, tmp_path):
    from ovss_d2.checkpoint import CheckpointMismatchError, OVSSCheckpointer

    other = OVSSTrainer.build_model(tiny_cfg(str(tmp_path), clip="ovss-tiny-convnext"))
    OVSSCheckpointer(other, save_dir=str(tmp_path)).save("convnext")
    cfg = tiny_cfg(str(tmp_path), extra=("MODEL.WEIGHTS", str(tmp_path / "convnext.pth")))
    with pytest.raises(CheckpointMismatchError, match="MODEL.WEIGHTS_STRICT False"):
        OVSSTrainer.evaluate(cfg)


def test_train_net_reads_flags_after_the_overrides():
    from detectron2.engine import default_argument_parser

    from ovss_d2.utils.cli import parse_args_anywhere

    argv = ["--config-file", "c.yaml", "MODEL.WEIGHTS", "w.pth", "--eval-only", "--num-gpus", "2",
            "SOLVER.BASE_LR", "-0.5", "--resume"]
    args = parse_args_anywhere(default_argument_parser(), argv)
    assert args.eval_only and args.resume and args.num_gpus == 2 and args.config_file == "c.yaml"
    assert args.opts == ["MODEL.WEIGHTS", "w.pth", "SOLVER.BASE_LR", "-0.5"]
    # detectron2's own parser reads those flags as overrides
    assert not default_argument_parser().parse_args(argv).eval_only


def test_missing_weights_fail_before_the_model_is_built(data_root, tmp_path):
    from ovss_d2.engine import setup

    args = train_args(str(tmp_path), extra=("MODEL.WEIGHTS", str(tmp_path / "nope.pth")))
    args.eval_only = True
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS .*nope.pth not found"):
        setup(args)
