"""OVSSCheckpointer: strict loading of every meta-architecture's own checkpoint, refusal of another
model's weights (and the explicit opt-out), and resuming past a corrupt last checkpoint."""
import logging
import os

import pytest
import torch

from helpers import REPO, log_records
from ovss_d2.checkpoint import CheckpointMismatchError, NoIntactCheckpointError, OVSSCheckpointer
from ovss_d2.engine import OVSSTrainer, load_config

TOY = {name: os.path.join(REPO, "configs", "toy", f"{name}.yaml")
       for name in ("clip_baseline_toy", "sed_toy", "err_seg_toy", "zeroseg_toy", "vil_seg_toy")}
NO_DATA = ["MODEL.CLIP.PRETRAINED", "none", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"]


def build(name, seed, extra=()):
    torch.manual_seed(seed)
    return OVSSTrainer.build_model(load_config(TOY[name], NO_DATA + list(extra)))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(TOY))
def test_every_meta_architecture_round_trips_strictly(name, tmp_path):
    source = build(name, seed=0)
    if hasattr(source, "vision_contrast"):  # a persistent buffer that training changes
        source.vision_contrast.center.normal_()
    OVSSCheckpointer(source, save_dir=str(tmp_path)).save("model_final")
    target = build(name, seed=1)
    before = snapshot(target)
    OVSSCheckpointer(target).load(str(tmp_path / "model_final.pth"))  # strict by default
    expected, loaded = source.state_dict(), target.state_dict()
    assert expected.keys() == loaded.keys()
    for k in expected:
        assert torch.equal(expected[k], loaded[k]), k
    assert any(not torch.equal(before[k], loaded[k]) for k in loaded)  # the seeds gave other weights


@pytest.fixture(scope="module")
def err_seg_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("err_seg")
    OVSSCheckpointer(build("err_seg_toy", seed=2), save_dir=str(out)).save("model_final")
    return str(out / "model_final.pth")


def test_another_methods_checkpoint_is_refused_and_changes_nothing(err_seg_checkpoint):
    sed = build("sed_toy", seed=0)
    before = snapshot(sed)
    with pytest.raises(CheckpointMismatchError) as info:
        OVSSCheckpointer(sed).load(err_seg_checkpoint)
    message = str(info.value)
    assert "\n" not in message and err_seg_checkpoint in message and "MODEL.WEIGHTS_STRICT False" in message
    own, other = set(before), set(torch.load(err_seg_checkpoint, weights_only=False)["model"])
    assert sorted(own - other)[0] in message and sorted(other - own)[0] in message
    assert all(torch.equal(before[k], v) for k, v in sed.state_dict().items())


def test_opt_out_loads_what_fits(err_seg_checkpoint):
    sed = build("sed_toy", seed=0)
    before = snapshot(sed)
    other = torch.load(err_seg_checkpoint, weights_only=False)["model"]
    OVSSCheckpointer(sed, strict=False).load(err_seg_checkpoint)
    after = sed.state_dict()
    fits = [k for k in after if k in other and other[k].shape == after[k].shape]
    assert any(k.startswith("clip.") for k in fits)
    for k in after:
        assert torch.equal(after[k], other[k] if k in fits else before[k]), k


def test_missing_unexpected_and_reshaped_tensors_are_named(tmp_path):
    model = build("clip_baseline_toy", seed=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    reshaped = "clip.model.positional_embedding"
    missing = [k for k in sorted(state) if k != reshaped][3]
    del state[missing]
    state[reshaped] = torch.zeros(2, 2)
    state["decoder.extra.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "edited.pth")
    with pytest.raises(CheckpointMismatchError) as info:
        OVSSCheckpointer(model).load(str(tmp_path / "edited.pth"))
    message = str(info.value)
    assert f"1 model tensors are not in it ({missing})" in message
    assert "1 of its tensors are not in the model (decoder.extra.weight)" in message
    assert f"{reshaped} (2, 2) vs {tuple(model.state_dict()[reshaped].shape)}" in message


def test_shared_parameter_counts_as_loaded_under_either_name(tmp_path):
    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(3, 3)
            self.b = torch.nn.Linear(3, 3)
            self.b.weight = self.a.weight

    model = Tied()
    state = {k: torch.randn_like(v) for k, v in model.state_dict().items() if k != "b.weight"}
    torch.save({"model": state}, tmp_path / "tied.pth")
    OVSSCheckpointer(model).load(str(tmp_path / "tied.pth"))
    assert torch.equal(model.b.weight, state["a.weight"])


def test_strictness_follows_the_config_in_the_predictor(err_seg_checkpoint):
    from ovss_d2.predictor import Predictor

    with pytest.raises(CheckpointMismatchError, match="MODEL.WEIGHTS_STRICT False"):
        Predictor(TOY["sed_toy"], err_seg_checkpoint, opts=NO_DATA)
    Predictor(TOY["sed_toy"], err_seg_checkpoint, opts=NO_DATA + ["MODEL.WEIGHTS_STRICT", "False"])


# ---- resume ----------------------------------------------------------------------------------------
def _saved_run(tmp_path, iterations):
    """A save directory with model_XXXXXXX.pth for each iteration (weights = the iteration) and
    last_checkpoint naming the last one."""
    model = torch.nn.Linear(2, 2)
    ckpt = OVSSCheckpointer(model, save_dir=str(tmp_path))
    for it in iterations:
        torch.nn.init.constant_(model.weight, float(it))
        ckpt.save(f"model_{it:07d}", iteration=it)
    return torch.nn.Linear(2, 2)


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def test_resume_skips_a_corrupt_last_checkpoint(tmp_path):
    fresh = _saved_run(tmp_path, [2, 5, 8])
    _truncate(tmp_path / "model_0000008.pth")
    with log_records("ovss_d2.checkpoint") as logged:
        extra = OVSSCheckpointer(fresh, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 5 and torch.all(fresh.weight == 5.0)
    warnings = [r.getMessage() for r in logged if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and str(tmp_path / "model_0000008.pth") in warnings[0]
    assert str(tmp_path / "model_0000005.pth") in warnings[0]


def test_resume_skips_a_missing_last_checkpoint_and_ignores_later_files(tmp_path):
    fresh = _saved_run(tmp_path, [2, 5, 8])
    (tmp_path / "last_checkpoint").write_text("model_0000005.pth")
    os.remove(tmp_path / "model_0000005.pth")  # named but gone; model_0000008 is not earlier
    extra = OVSSCheckpointer(fresh, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 2 and torch.all(fresh.weight == 2.0)


def test_resume_without_any_intact_checkpoint_names_them(tmp_path):
    fresh = _saved_run(tmp_path, [2, 5])
    for it in (2, 5):
        _truncate(tmp_path / f"model_{it:07d}.pth")
    with pytest.raises(NoIntactCheckpointError) as info:
        OVSSCheckpointer(fresh, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    assert "model_0000005.pth" in str(info.value) and "model_0000002.pth" in str(info.value)
