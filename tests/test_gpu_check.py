"""``make gpu-check`` (tools/gpu_check.py) on the CPU: its plan (cheapest first, ``--quick`` a subset,
the authors' code beside ours only with their checkouts), its bookkeeping (tables written after
every step, side-by-side ratios, a failed step fails the run), a real ``--smoke`` run of the
benchmark steps, and the argument handling of the side-by-side harness
(tools/golden/time_authors.py)."""
import json
import os
import sys

import pytest
import torch

from helpers import REPO

sys.path.insert(0, os.path.join(REPO, "tools"))
sys.path.insert(0, os.path.join(REPO, "tools", "golden"))
import gpu_check  # noqa: E402
import time_authors  # noqa: E402


def summary(out, suffix="gpu"):
    with open(os.path.join(out, f"gpu_check_{suffix}.json")) as f:
        return json.load(f)


def fake_checkout(root, method):
    """The files ``check_checkout`` looks for (not the authors' code: the dry run never imports it)."""
    for rel in (time_authors.REQUIRED[method], time_authors.CONFIGS[method], "open_clip/src/open_clip/__init__.py"):
        os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
        open(os.path.join(root, rel), "w").close()
    return str(root)


def test_dry_run_plans_cheapest_first_and_quick_is_a_subset(tmp_path):
    assert gpu_check.main(["--dry-run", "--output-dir", str(tmp_path / "full")]) == 0
    assert gpu_check.main(["--dry-run", "--quick", "--output-dir", str(tmp_path / "quick")]) == 0
    full, quick = summary(tmp_path / "full"), summary(tmp_path / "quick")
    kinds = [s["kind"] for s in full["steps"]]
    assert kinds == ["tests", "golden"] + ["inference"] * 4 + ["train"] * 2 + ["inference"] * 2 + ["golden"]
    names = [s["name"] for s in full["steps"]]
    assert names[2:6] == ["ours sed_b_768 fp32", "ours err_seg_b_640 fp32", "ours sed_b_768 bf16-channels-last",
                          "ours err_seg_b_640 bf16-channels-last"]
    assert names[-3:] == ["ours sed_b_768 bf16-channels-last-compile", "ours err_seg_b_640 bf16-channels-last-compile",
                          "golden tests ConvNeXt-L"]
    quick_names = [s["name"] for s in quick["steps"]]
    assert quick_names == [n for n in names if n in quick_names]  # a subset, in the same order
    assert not any("compile" in n or "ConvNeXt-L" in n for n in quick_names)
    assert quick_names.count("ours err_seg_b_640 training") == 1 and "ours sed_b_768 training" not in quick_names
    cmd = {s["name"]: s["command"] for s in quick["steps"]}
    assert "--vocab-sizes 150 847 " in cmd["ours sed_b_768 fp32"] and "--topk 0" in cmd["ours sed_b_768 fp32"]
    assert "--vocab-sizes 150 459 847 " in {s["name"]: s["command"] for s in full["steps"]}["ours sed_b_768 fp32"]
    assert "--train --batch-sizes 1" in cmd["ours err_seg_b_640 training"]
    assert cmd["golden tests ConvNeXt-B"].startswith("OVSS_D2_TEST_DEVICE=cuda OVSS_D2_GOLDEN_SIZES=b ")
    assert cmd["CUDA tests"] == "python -m pytest tests/test_device.py -m cuda -q"
    # the later variants of a model go into the same table
    assert "--append" not in cmd["ours sed_b_768 fp32"] and "--append" in cmd["ours sed_b_768 bf16-channels-last"]
    assert all(s["status"] == "planned" for s in full["steps"])
    md = open(tmp_path / "quick" / "gpu_check_gpu.md").read()
    assert "No checkout of the authors' code was given" in md
    assert quick["environment"]["torch"] == torch.__version__ and "build" in quick["environment"]["detectron2"]


def test_authors_code_runs_right_after_ours_only_with_a_checkout(tmp_path):
    sed = fake_checkout(tmp_path / "SED", "sed")
    assert gpu_check.main(["--dry-run", "--quick", "--sed-checkout", sed, "--output-dir", str(tmp_path / "o")]) == 0
    names = [s["name"] for s in summary(tmp_path / "o")["steps"]]
    assert names.index("authors' sed_b_768 fp32") == names.index("ours sed_b_768 fp32") + 1
    assert not any(n.startswith("authors' err_seg") for n in names)  # no ERR-Seg checkout given
    assert "No checkout" not in open(tmp_path / "o" / "gpu_check_gpu.md").read()
    with pytest.raises(SystemExit, match=r"no err_seg/__init__.py.*github.com/lchen1019/ERR-Seg"):
        gpu_check.main(["--dry-run", "--err-seg-checkout", str(tmp_path / "SED")])
    with pytest.raises(SystemExit, match="nowhere: no sed/__init__.py"):
        gpu_check.main(["--dry-run", "--sed-checkout", str(tmp_path / "nowhere")])


def _python(code: str):
    return ["-c", code]


def test_tables_are_written_after_every_step_and_a_failure_fails_the_run(tmp_path, monkeypatch):
    """Three steps: ours (writes its table), the authors' (checks that the summary on disk already
    records step 1, writes their table), one that fails. The run exits 1, every finished step is
    in the summary, and the side-by-side row holds the ratios of the numbers written."""
    out = str(tmp_path)
    ours, theirs = os.path.join(out, "m_vocab_cpu"), os.path.join(out, "authors_m_vocab_cpu")
    row = {"mode": "inference", "classes": 150, "batch": 1}
    write = ("import json; json.dump({{'rows': [dict({row}, total_ms_median={ms}, peak_mem_gib={gib})]}}, "
             "open({p!r}, 'w'))")
    steps = [
        gpu_check.Step("ours", "inference", _python(write.format(row=row, ms=100.0, gib=2.0, p=ours + ".json")),
                       outputs=[ours]),
        gpu_check.Step("theirs", "authors", _python(
            f"import json; s = json.load(open({os.path.join(out, 'gpu_check_cpu.json')!r}))['steps']; "
            "assert [x['status'] for x in s] == ['ok', 'running', 'planned'], s; "
            + write.format(row=row, ms=300.0, gib=8.0, p=theirs + ".json")), outputs=[theirs]),
        gpu_check.Step("broken", "tests", _python("import sys; print('something broke'); sys.exit(3)")),
    ]
    monkeypatch.setattr(gpu_check, "plan", lambda args: steps)
    assert gpu_check.main(["--device", "cpu", "--output-dir", out]) == 1
    data = summary(out, "cpu")
    assert [(s["name"], s["status"]) for s in data["steps"]] == [("ours", "ok"), ("theirs", "ok"), ("broken", "failed")]
    assert data["steps"][2]["detail"] == "exit 3: something broke"
    (pair,) = data["side_by_side"]
    assert pair["speed_ratio"] == pytest.approx(3.0) and pair["memory_ratio"] == pytest.approx(0.25)
    md = open(os.path.join(out, "gpu_check_cpu.md")).read()
    assert "| m_vocab_cpu | inference | 150 | 1 |" in md and "3.00x" in md and "| broken | failed |" in md
    # a lease about to end: no step starts after --time-limit, the rest are listed, the run fails
    for s in steps:
        s.status = "planned"
    assert gpu_check.main(["--device", "cpu", "--output-dir", out, "--time-limit", "1e-9"]) == 1
    assert [s["status"] for s in summary(out, "cpu")["steps"]] == ["not run"] * 3


def test_smoke_run_writes_the_benchmark_tables(tmp_path):
    """The real benchmark steps of the plan (ERR-Seg's, on the tiny ToyWorld config): fp32 and bf16 +
    channels-last in one table, the variant named in each row; training at batch 1."""
    out = str(tmp_path)
    assert gpu_check.main(["--device", "cpu", "--smoke", "--output-dir", out, "--steps", "ours err_seg*"]) == 0
    data = summary(out, "cpu")
    assert [s["status"] for s in data["steps"]] == ["ok"] * 3 and data["mode"] == "smoke"
    with open(os.path.join(out, "err_seg_b_640_vocab_cpu.json")) as f:
        table = json.load(f)
    assert [(r["variant"], r["classes"]) for r in table["rows"]] == [
        ("fp32", 4), ("fp32", 6), ("bf16-channels-last", 4), ("bf16-channels-last", 6)]
    assert all(r["total_ms_p90"] >= r["total_ms_median"] > 0 and r["kept"] == 3 for r in table["rows"])
    assert table["environment"]["torch"] == torch.__version__
    with open(os.path.join(out, "err_seg_b_640_train_cpu.json")) as f:
        (train,) = json.load(f)["rows"]
    assert train["mode"] == "train" and train["batch"] == 1 and train["images_per_s"] > 0
    assert train["train_labels"] == "blocks"  # the batch the authors' code gets
    assert "| variant |" in open(os.path.join(out, "err_seg_b_640_vocab_cpu.md")).read()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given without CUDA")
def test_without_cuda_it_says_how_to_check_the_tool(tmp_path, capsys):
    assert gpu_check.main(["--output-dir", str(tmp_path)]) == 2
    assert "no CUDA device here" in capsys.readouterr().err and not os.listdir(tmp_path)


def test_authors_harness_argument_handling(tmp_path):
    args = time_authors.parse_args(["err_seg", "/x"])
    assert (args.vocab_sizes, args.image_size, args.crm, args.device) == ([150, 459, 847], [640, 853], 32, "cuda")
    with pytest.raises(SystemExit):
        time_authors.parse_args(["err_seg", "/x", "--vocab-sizes", "0"])
    with pytest.raises(SystemExit):
        time_authors.parse_args(["mask2former", "/x"])
    with pytest.raises(SystemExit, match=r"nowhere: no sed/__init__.py; pass a git checkout of https://github.com/xb534"):
        time_authors.main(["sed", str(tmp_path / "nowhere")])  # before importing anything of theirs
    assert time_authors.check_checkout("sed", fake_checkout(tmp_path / "SED", "sed")) == str(tmp_path / "SED")


def test_training_batch_is_shared_and_block_labels_hold_few_classes():
    """The training batch both sides get (benchmark_timing.training_batch): "blocks" labels are a 4 x 4
    grid of one class each (at most 16 classes, what the authors' ERR-Seg training needs), the same
    bytes on every call; "random" labels hold every class."""
    from benchmark_timing import training_batch

    a, b = training_batch(2, 37, 50, 171, "blocks"), training_batch(2, 37, 50, 171, "blocks")
    for x, y in zip(a, b):
        assert torch.equal(x["image"], y["image"]) and torch.equal(x["sem_seg"], y["sem_seg"])
        labels = x["sem_seg"].numpy()
        assert x["image"].shape == (3, 37, 50) and labels.shape == (37, 50) and len(set(labels.flat)) <= 16
        for i in range(4):  # block (i, j) covers rows [37 i / 4, 37 (i + 1) / 4), likewise the columns
            for j in range(4):
                block = labels[-(-37 * i // 4):-(-37 * (i + 1) // 4), -(-50 * j // 4):-(-50 * (j + 1) // 4)]
                assert block.size and (block == block.flat[0]).all()
    dense = training_batch(1, 64, 64, 5, "random")[0]["sem_seg"]
    assert sorted(set(dense.flatten().tolist())) == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="labels 'stripes'"):
        training_batch(1, 8, 8, 5, "stripes")
