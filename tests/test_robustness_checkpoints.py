"""Checkpoints are read as data only, whatever the entry point; tools/convert_checkpoint.py never
overwrites its input nor leaves a partial output; a weights path that is a text file or a folder is
one clear line (issue 28, items 1, 3 and 16).

The crafted files hold an object whose ``__reduce__`` opens a marker file for writing: unpickling
it (as ``pickle.load`` or ``torch.load(weights_only=False)`` do) creates the marker, which the
first test checks, so "the marker does not exist" really means "the payload did not run"."""
import importlib.util
import os
import pickle
import re
import resource
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import REPO, register_tiny_splits, tiny_cfg, tiny_opts, train_args
from ovss_d2.checkpoint import CheckpointReadError, OVSSCheckpointer, UnsafeCheckpointError

TOOL = os.path.join(REPO, "tools", "convert_checkpoint.py")
BASE = os.path.join(REPO, "configs", "Base-OVSS.yaml")
# a few keys of the official SED layout (the converter recognises it by the decoder1.cnext prefix)
SED_KEYS = ["sem_seg_head.predictor.transformer.decoder1.cnext.gamma",
            "sem_seg_head.predictor.transformer.decoder1.cnext.dwconv.weight",
            "sem_seg_head.predictor.transformer.conv1.weight"]


class CreatesFile:
    """Unpickling this opens ``path`` for writing: the file appears if the payload runs."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def crafted(folder, ext, marker):
    """A checkpoint that looks normal (a model state dict) and carries the payload."""
    path = os.path.join(str(folder), f"crafted{ext}")
    if ext == ".pkl":  # detectron2 model-zoo layout: NumPy arrays
        with open(path, "wb") as f:
            pickle.dump({"model": {"w": np.zeros(2, np.float32)}, "__author__": "x", "x": CreatesFile(marker)}, f)
    else:
        torch.save({"model": {"w": torch.zeros(2)}, "x": CreatesFile(marker)}, path)
    return path


def load_tool():
    spec = importlib.util.spec_from_file_location("convert_checkpoint", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_tool(capsys, *argv):
    """``python tools/convert_checkpoint.py ARGV`` in this process: (exit message or None, stdout)."""
    saved = sys.argv
    sys.argv = [TOOL, *argv]
    try:
        load_tool().main()
        message = None
    except SystemExit as e:
        message = str(e.code)
    finally:
        sys.argv = saved
    return message, capsys.readouterr().out


def refused(marker, fn, *args, **kwargs):
    """Call ``fn``, which must raise; the payload must not have run (checked first). Returns the error."""
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    assert not marker.exists(), "the checkpoint's payload ran"
    return info.value


def official_sed(path, size=4):
    torch.save({"model": {k: torch.randn(size) for k in SED_KEYS}, "iteration": 9, "optimizer": {}}, path)
    return path


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny_data"))
    register_tiny_splits(root)
    return root


# ---- item 1: no code from a checkpoint ----------------------------------------------------------------
@pytest.mark.parametrize("ext", [".pkl", ".pth"])
def test_the_crafted_files_do_run_code_when_unpickled(tmp_path, ext):
    marker = tmp_path / "ran"
    path = crafted(tmp_path, ext, marker)
    if ext == ".pkl":
        with open(path, "rb") as f:
            pickle.load(f)
    else:
        torch.load(path, weights_only=False)
    assert marker.exists()  # the control: without data-only reading the payload runs


@pytest.mark.parametrize("ext", [".pkl", ".pth"])
def test_convert_checkpoint_refuses_a_crafted_file(tmp_path, capsys, ext):
    marker = tmp_path / "ran"
    message, _ = run_tool(capsys, crafted(tmp_path, ext, marker), str(tmp_path / "out.pth"))
    assert not marker.exists()
    assert message and "Refused to load" in message and "open" in message and "\n" not in message
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.parametrize("ext", [".pkl", ".pth"])
def test_model_weights_in_train_net_refuse_a_crafted_file(data_root, tmp_path, monkeypatch, ext):
    """MODEL.WEIGHTS through train_net.py --eval-only. The .pth case runs with the environment
    override that makes a plain ``torch.load`` unpickle everything (fvcore's call is plain)."""
    import train_net

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "ran"
    args = train_args(str(tmp_path / "out"), extra=("MODEL.WEIGHTS", crafted(tmp_path, ext, marker)))
    args.eval_only = True
    error = refused(marker, train_net.main, args)
    assert isinstance(error, UnsafeCheckpointError)
    assert re.search(r"Refused to load .*crafted.*\(io\.open\)", str(error))


@pytest.mark.parametrize("ext", [".pkl", ".pth"])
def test_predictor_weights_refuse_a_crafted_file(tmp_path, monkeypatch, ext):
    from ovss_d2.predictor import Predictor

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    marker = tmp_path / "ran"
    error = refused(marker, Predictor, BASE, crafted(tmp_path, ext, marker), opts=tiny_opts(str(tmp_path)))
    assert isinstance(error, UnsafeCheckpointError) and "unpickling it could run code" in str(error)


def test_demo_weights_refuse_a_crafted_file_in_one_line(tmp_path, capsys):
    from PIL import Image

    spec = importlib.util.spec_from_file_location("ovss_demo", os.path.join(REPO, "demo", "demo.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "in.png")
    marker = tmp_path / "ran"
    opts = tiny_opts(str(tmp_path))[:10]  # the model keys only
    argv = ["--config-file", BASE, "--input", str(tmp_path / "in.png"), "--output", str(tmp_path / "out"),
            "--vocabulary", "grass,sky", "--weights", crafted(tmp_path, ".pkl", marker), "--opts", *opts]
    assert demo.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert not marker.exists()
    assert "Refused to load" in err and "\n" not in err, err


def test_resume_reads_our_checkpoints_with_numpy_values(tmp_path):
    """Data-only reading keeps what real checkpoints hold: tensors, numbers, strings, nested
    containers, NumPy arrays and scalars (older code saved some; torch's own data-only default
    refuses NumPy, so such a checkpoint looked corrupt to --resume)."""
    model = torch.nn.Linear(2, 2)
    torch.nn.init.constant_(model.weight, 3.0)
    OVSSCheckpointer(model, save_dir=str(tmp_path)).save(
        "model_0000003", iteration=np.int64(3), lr=np.float64(0.5), history=np.arange(4), note=("a", [1, {"b": 2}]))
    fresh = torch.nn.Linear(2, 2)
    extra = OVSSCheckpointer(fresh, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 3 and extra["lr"] == 0.5 and extra["note"] == ("a", [1, {"b": 2}])
    assert np.array_equal(extra["history"], np.arange(4)) and torch.all(fresh.weight == 3.0)


def test_detectron2_model_zoo_pkl_still_loads(tmp_path):
    """A detectron2 model-zoo .pkl ({"model": NumPy arrays, "__author__"}) loads through the
    data-only unpickler with its values."""
    model = torch.nn.Linear(3, 2)
    weights = {"weight": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.array([1.5, -2.0], np.float32)}
    with open(tmp_path / "zoo.pkl", "wb") as f:
        pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo"}, f)
    OVSSCheckpointer(model).load(str(tmp_path / "zoo.pkl"))
    assert np.array_equal(model.weight.detach().numpy(), weights["weight"])
    assert np.array_equal(model.bias.detach().numpy(), weights["bias"])


def test_tiny_clip_checkpoint_is_read_as_data_only(tmp_path):
    from ovss_d2.toyworld.tiny_clip import load_tiny_clip

    marker = tmp_path / "ran"
    path = tmp_path / "tiny.pt"
    torch.save({"name": "ovss-tiny-vit", "state_dict": {}, "x": CreatesFile(marker)}, path)
    assert isinstance(refused(marker, load_tiny_clip, str(path)), UnsafeCheckpointError)


# ---- item 3 and 16: convert_checkpoint.py never loses or half-writes a file ------------------------------
def test_convert_refuses_to_write_over_its_input(tmp_path, capsys, monkeypatch):
    src = official_sed(str(tmp_path / "official.pth"))
    before = open(src, "rb").read()
    monkeypatch.chdir(tmp_path)
    for out in (src, "official.pth", os.path.join(".", "sub", "..", "official.pth")):
        message, _ = run_tool(capsys, src, out)
        assert message and "is the input" in message, out
    assert open(src, "rb").read() == before  # optimizer and iteration still there
    message, out = run_tool(capsys, src, "converted.pth")
    assert message is None and "wrote converted.pth (3 tensors)" in out
    converted = torch.load("converted.pth", weights_only=True)["model"]
    assert len(converted) == 3 and sorted(os.listdir(tmp_path)) == ["converted.pth", "official.pth"]  # no temporary


def test_convert_names_a_missing_input_and_a_folder_output(tmp_path, capsys):
    src = official_sed(str(tmp_path / "official.pth"))
    message, _ = run_tool(capsys, str(tmp_path / "nope.pth"), str(tmp_path / "out.pth"))
    assert message.startswith(f"input {tmp_path / 'nope.pth'} not found")
    message, _ = run_tool(capsys, src, str(tmp_path))
    assert message == f"output {tmp_path} is a folder: give a file name, e.g. {tmp_path / 'model.pth'}."


def test_convert_reports_a_truncated_input_in_one_line(tmp_path, capsys):
    src = official_sed(str(tmp_path / "official.pth"))
    data = open(src, "rb").read()
    open(src, "wb").write(data[: len(data) // 2])
    message, _ = run_tool(capsys, src, str(tmp_path / "out.pth"))
    assert message and "Cannot read checkpoint" in message and "truncated" in message and "\n" not in message
    assert not (tmp_path / "out.pth").exists()


def _limit_file_size(limit):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_convert_on_a_full_disk_leaves_no_partial_output(tmp_path):
    """The disk fills while the output is written (a file-size limit of 64 KiB for a ~1 MiB
    output): one line naming the output; no partial file, no temporary file, and an older file of
    that name is left as it was."""
    src = official_sed(str(tmp_path / "official.pth"), size=256 * 1024)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    (out_dir / "sed.pth").write_bytes(b"an earlier conversion")
    proc = subprocess.run([sys.executable, TOOL, src, str(out_dir / "sed.pth")], capture_output=True, text=True,
                          timeout=300, preexec_fn=_limit_file_size(64 * 1024))
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"cannot write {out_dir / 'sed.pth'} (File too large): nothing was written"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(os.listdir(out_dir)) == ["sed.pth"] and (out_dir / "sed.pth").read_bytes() == b"an earlier conversion"


# ---- item 16: weights that are not a checkpoint ------------------------------------------------------------
def test_model_weights_that_are_a_text_file_or_a_folder_fail_first_in_one_line(data_root, tmp_path):
    from ovss_d2.engine import setup

    (tmp_path / "model_final.pth").write_text("<html>404 Not Found</html>\n")
    cases = [(str(tmp_path / "model_final.pth"), CheckpointReadError, r"is not a checkpoint: it starts with b'<html"),
             (str(tmp_path), FileNotFoundError, r"is a folder \(it holds model_final.pth\): give the checkpoint "
                                                r"file in it, e\.g\. .*model_final\.pth")]
    for weights, error, words in cases:
        args = train_args(str(tmp_path / "out"), extra=("MODEL.WEIGHTS", weights))
        args.eval_only = True
        with pytest.raises(error, match=words) as info:
            setup(args)
        assert "\n" not in str(info.value)


def test_checkpointer_names_a_text_file_and_an_empty_file(tmp_path):
    model = OVSSCheckpointer(torch.nn.Linear(2, 2))
    (tmp_path / "w.pth").write_text("hello")
    (tmp_path / "empty.pkl").write_bytes(b"")
    with pytest.raises(CheckpointReadError, match="w.pth is not a checkpoint"):
        model.load(str(tmp_path / "w.pth"))
    with pytest.raises(CheckpointReadError, match="empty.pkl is not a checkpoint: it is empty"):
        model.load(str(tmp_path / "empty.pkl"))


def test_model_weights_none_means_no_checkpoint(tmp_path):
    model = torch.nn.Linear(2, 2)
    before = model.weight.detach().clone()
    assert OVSSCheckpointer(model).load("none") == {}
    assert torch.equal(model.weight, before)
    cfg = tiny_cfg(str(tmp_path), extra=("MODEL.WEIGHTS", "None"))
    from ovss_d2.engine import check_weights_file

    check_weights_file(cfg.MODEL.WEIGHTS)  # no error: "none" is no file
