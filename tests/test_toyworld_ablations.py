"""tools/toyworld_ablations.py on a fake trainer: its cache (a finished row is not rerun, --force
reruns it), its tie rule on hand-made numbers, and the content of the files it writes. No training."""
import csv
import json
import os

import pytest
from test_tools import _tool

abl = _tool("toyworld_ablations")

# Hand-made seed values (seed 1, seed 2) of every metric of the ViL-Seg Table 2 models on both sets:
# against "vil_seg" (mean 11, spread 2): no_vision (6.5, spread 1) a clear effect, kmeans (12, spread 4)
# a tie, clip_seg (15.5, spread 1) a sign reversal.
FAKE = {"vil_seg": (10.0, 12.0), "vil_seg_no_vision": (6.0, 7.0), "vil_seg_kmeans": (10.0, 14.0),
        "clip_seg": (15.0, 16.0), "vil_seg_enc": (20.0, 21.0)}
# The dense evaluation of "CLIP + Seg" (its row's own evaluation) reads other numbers than its training's.
FAKE_DENSE = {"clip_seg": (15.0, 16.0), "vil_seg": (3.0, 4.0)}
FAKE_TRAIN_OWN = {"clip_seg": (1.0, 1.0)}
# seconds per training iteration (seed 1, seed 2) of ZeroSeg's mask-ratio models
SPEED = {"zs_mask_0": (2.0, 2.1), "zs_all": (1.5, 1.6), "zs_mask_08": (1.2, 1.3)}
# the same models' training steps timed side by side (ms, rounds 1 and 2): 0.8 is no faster than 0.6
STEP_MS = {"zs_mask_0": (300.0, 310.0), "zs_all": (200.0, 205.0), "zs_mask_08": (198.0, 210.0)}


@pytest.fixture
def fake(monkeypatch):
    """Replace train_net.py by a writer of the metrics files; record each call."""
    calls = []

    def run_train_net(config, output_dir, train, log_path, desc="", opts=None):
        parts = output_dir.split(os.sep)
        seed = int(parts[-1][len("seed"):])
        model = parts[-2] if train else parts[-3]
        table = FAKE_TRAIN_OWN if train and model in FAKE_TRAIN_OWN else (FAKE if train else FAKE_DENSE)
        value = table.get(model, (5.0, 6.0))[seed - 1]
        datasets = abl.model_datasets(config, opts)
        for d in datasets:
            os.makedirs(os.path.join(output_dir, "inference", d), exist_ok=True)
            with open(os.path.join(output_dir, "inference", d, "sem_seg_evaluation.json"), "w") as f:
                json.dump({k: value for k in ("mIoU", "mIoU-seen", "mIoU-unseen", "hIoU", "pACC")}, f)
        with open(log_path, "w") as f:
            if train:
                per_it = SPEED.get(model, (1.0, 1.0))[seed - 1]
                f.write(f"[d2] Overall training speed: 498 iterations in 0:09:00 ({per_it} s / it)\n")
            for i, _ in enumerate(datasets):
                f.write(f"[d2] Total inference pure compute time: 0:00:02 (0.00{i + 5} s / iter per device)\n")
        calls.append((model, seed, train, config, list(opts)))
        return 60.0

    def build_teacher_cache(config, opts, log_path):
        root = opts[opts.index("MODEL.ZEROSEG.TEACHER_CACHE") + 1]
        os.makedirs(root, exist_ok=True)
        open(os.path.join(root, "index.json"), "w").close()
        calls.append(("teacher_cache", root, None, config, list(opts)))
        return 5.0

    monkeypatch.setattr(abl, "run_train_net", run_train_net)
    def measure_step_times(models, rounds, steps=20, warmup=3):
        calls.append(("step_times", tuple(models), rounds, None, []))
        return {"ms": {str(r + 1): {m: STEP_MS[m][r] for m in models} for r in range(rounds)}}

    monkeypatch.setattr(abl, "build_teacher_cache", build_teacher_cache)
    monkeypatch.setattr(abl, "measure_step_times", measure_step_times)
    monkeypatch.setattr(abl, "prepare_data", lambda: None)
    return calls


def test_tie_rule_on_hand_made_numbers():
    clear = abl.compare([10.0, 12.0], [6.0, 7.0])  # means 11 vs 6.5, spreads 2 and 1
    assert clear == {"diff": pytest.approx(4.5), "spread": pytest.approx(2.0), "sign": 1}
    assert abl.verdict(">", clear["sign"]) == "reproduced"
    tie = abl.compare([10.0, 12.0], [10.0, 14.0])  # 11 vs 12: |-1| does not exceed the spread 4
    assert tie["sign"] == 0 and abl.verdict(">", 0) == "tie" and abl.verdict(">=", 0) == "reproduced"
    reversal = abl.compare([10.0, 12.0], [15.0, 16.0])  # 11 vs 15.5, spreads 2 and 1
    assert reversal["sign"] == -1 and abl.verdict(">", -1) == "reversed" and abl.verdict("<", -1) == "reproduced"
    assert abl.compare([3.0, 5.0], [2.0, 2.0])["sign"] == 0  # a difference equal to the spread (2) is a tie
    assert abl.compare([3.0, 5.0], [1.5, 2.0])["sign"] == 1  # 4 - 1.75 = 2.25 exceeds it
    with pytest.raises(ValueError, match="two seeds"):
        abl.compare([1.0], [2.0, 3.0])


def test_cache_force_and_outputs(fake, tmp_path):
    out = str(tmp_path / "abl")
    report = abl.main(["--groups", "vilseg_table2", "--output-dir", out])
    # 4 models x 2 seeds trained, and the dense evaluations of the CLIP + Seg and ViL-Seg checkpoints
    assert sorted((m, s, t) for m, s, t, _, _ in fake) == sorted(
        [(m, s, True) for m in FAKE for s in (1, 2)] + [(m, s, False) for m in FAKE_DENSE for s in (1, 2)])
    dense = [c for c in fake if not c[2]]
    assert all(c[3].endswith("clip_baseline_toy.yaml") for c in dense)
    assert all(c[4][:2] == ["MODEL.WEIGHTS", os.path.join(out, "models", c[0], f"seed{c[1]}", "model_final.pth")]
               for c in dense)
    assert all(["SEED", str(c[1])] == c[4][-2:] for c in fake if c[2])

    claims = {(c["a"], c["b"], c["column"]): c for c in report["groups"]["vilseg_table2"]["claims"]}
    assert claims[("vil_seg", "vil_seg_no_vision", "val unseen")]["verdict"] == "reproduced"
    assert [c["verdict"] for c in report["groups"]["vilseg_table2"]["claims"] if c["a"] == "vil_seg_enc"] \
        == ["reproduced", "reproduced"]
    assert claims[("vil_seg", "vil_seg_kmeans", "val unseen")]["verdict"] == "tie"
    # CLIP + Seg is judged on its dense evaluation (15, 16), not its training's own K-means evaluation (1, 1)
    assert claims[("vil_seg", "clip_seg", "val unseen")]["verdict"] == "reversed"
    assert claims[("vil_seg", "clip_seg", "val unseen")]["diff"] == pytest.approx(11.0 - 15.5)
    assert report["not_measured"] == []

    md = open(os.path.join(out, "ablations.md")).read()
    assert "| ViL-Seg w/o L_vision | 22.05 | 6.5 (6.0, 7.0) |" in md
    assert "| Offline (K-means), trained without head and L_cluster | 30.97 | 12.0 (10.0, 14.0) |" in md
    assert "| CLIP + Seg: cross-modal loss only, dense (MaskCLIP-style) | 27.40 (Table 1) | 15.5 (15.0, 16.0) |" in md
    assert "| (diagnostic) ViL-Seg's weights, dense as CLIP + Seg | - | 3.5 (3.0, 4.0) |" in md
    assert "-> **tie**" in md and "-> **reversed**" in md and "-> **reproduced**" in md
    with open(os.path.join(out, "ablations.csv")) as f:
        rows = list(csv.DictReader(f))
    mean = [r for r in rows if r["row"] == "vil_seg" and r["column"] == "val unseen" and r["seed"] == "mean"]
    assert [float(r["value"]) for r in mean] == [11.0]
    assert {(r["seed"], float(r["value"])) for r in rows if r["row"] == "clip_seg" and r["column"] == "wide mIoU"} \
        == {("1", 15.0), ("2", 16.0), ("mean", 15.5)}
    saved = json.load(open(os.path.join(out, "ablations.json")))
    assert saved["groups"]["vilseg_table2"]["rows"]["vil_seg"]["values"]["val mIoU"] == {"1": 10.0, "2": 12.0}

    os.remove(os.path.join(out, "models", "vil_seg_kmeans", "seed2", "ablation_time.json"))
    fake.clear()  # a training without its time file did not finish: --report-only reads its metrics, runs nothing
    partial = abl.main(["--groups", "vilseg_table2", "--output-dir", out, "--report-only"])
    assert fake == [] and partial["not_measured"] == []
    abl.main(["--groups", "vilseg_table2", "--output-dir", out])  # a run trains it again
    assert [(m, s) for m, s, *_ in fake] == [("vil_seg_kmeans", 2)]

    fake.clear()  # everything is cached: nothing runs again, the same report comes back
    again = abl.main(["--groups", "vilseg_table2", "--output-dir", out])
    assert fake == [] and again["groups"] == report["groups"]
    # --force reruns the chosen rows' models once each, though two rows (and Fig. 5's C = 25) share one
    abl.main(["--rows", "vil_seg,vil_seg_dense,vil_seg_c25", "--output-dir", out, "--force"])
    assert sorted((m, s, t) for m, s, t, *_ in fake) == [("vil_seg", s, t) for s in (1, 2) for t in (False, True)]


def test_missing_seed_is_not_judged_and_named(fake, tmp_path):
    out = str(tmp_path / "abl")
    report = abl.main(["--rows", "vil_seg,vil_seg_no_vision", "--output-dir", out])
    assert {c["b"]: c["verdict"] for c in report["groups"]["vilseg_table2"]["claims"]}["vil_seg_kmeans"] \
        == "not measured"
    assert report["not_measured"] == ["vil_seg_kmeans", "clip_seg", "vil_seg_dense", "vil_seg_enc"]
    md = open(os.path.join(out, "ablations.md")).read()
    assert "`python tools/toyworld_ablations.py --rows vil_seg_kmeans,clip_seg,vil_seg_dense,vil_seg_enc`" in md


def test_dry_run_lists_and_runs_nothing(fake, tmp_path, capsys):
    abl.main(["--groups", "sed_cer", "--output-dir", str(tmp_path), "--dry-run"])
    printed = capsys.readouterr().out
    assert fake == []
    # one SED model per seed, listed once although three rows evaluate it
    assert printed.count("train_net.py --config-file configs/toy/sed_toy.yaml OUTPUT_DIR") == 2
    assert printed.count("--eval-only") == 6 and "MODEL.SED.EARLY_REJECTION_TOPK 1" in printed


def test_training_speed_column_and_claim(fake, tmp_path):
    report = abl.main(["--groups", "zeroseg_table5", "--output-dir", str(tmp_path)])
    # the three mask ratios share one teacher cache (grids 1..4), built once, before any training
    cache = str(tmp_path / "teacher" / "grids_1_2_3_4")
    assert [c[1] for c in fake if c[0] == "teacher_cache"] == [cache] and fake[0][0] == "teacher_cache"
    trained = [c for c in fake if c[2] is True]
    assert len(trained) == 6 and all(c[4][-2:] == ["MODEL.ZEROSEG.TEACHER_CACHE", cache] for c in trained)
    rows = report["groups"]["zeroseg_table5"]["rows"]
    assert rows["zs_t5_0"]["values"]["train s / it"] == {1: 2.0, 2: 2.1}
    assert rows["zs_t5_08"]["values"]["ms / step (side by side)"] == {1: 198.0, 2: 210.0}
    # the speed claims read the side-by-side step times (measured once, both rounds), not the logged speed
    assert [c[1:3] for c in fake if c[0] == "step_times"] == [(("zs_mask_0", "zs_all", "zs_mask_08"), 2)]
    speed = {(c["a"], c["b"]): c for c in report["groups"]["zeroseg_table5"]["claims"]
             if c["column"] == "ms / step (side by side)"}
    assert speed[("zs_t5_06", "zs_t5_0")]["diff"] == pytest.approx(202.5 - 305.0)
    assert speed[("zs_t5_06", "zs_t5_0")]["verdict"] == "reproduced"
    assert speed[("zs_t5_08", "zs_t5_06")]["verdict"] == "tie"  # 204 vs 202.5, spread 12
    abl.main(["--groups", "zeroseg_table5", "--output-dir", str(tmp_path)])
    assert len([c for c in fake if c[0] == "step_times"]) == 1  # cached: not measured again
    assert "| mask ratio 0.8 | 32.8 (speed-up 43 %) |" in open(tmp_path / "ablations.md").read()
    assert "| 1.25 (1.20, 1.30) |" in open(tmp_path / "ablations.md").read()


def test_inference_times_parsed_per_dataset(tmp_path):
    log = tmp_path / "eval.log"
    log.write_text("x\n[d2] Total inference pure compute time: 0:00:02 (0.007369 s / iter per device, on 1 devices)\n"
                   "[d2] Total inference pure compute time: 0:00:09 (0.030000 s / iter per device, on 1 devices)\n")
    assert abl.parse_inference_ms(str(log), ["a", "b"]) == {"a": pytest.approx(7.369), "b": pytest.approx(30.0)}
    with pytest.raises(ValueError, match="eval.log: 2 inference-time lines for the 3 datasets"):
        abl.parse_inference_ms(str(log), ["a", "b", "c"])


def test_unknown_rows_and_single_seed_refused(tmp_path):
    with pytest.raises(SystemExit):
        abl.main(["--rows", "no_such_row", "--output-dir", str(tmp_path), "--dry-run"])
    with pytest.raises(SystemExit):
        abl.main(["--seeds", "1", "--output-dir", str(tmp_path), "--dry-run"])


def test_every_row_model_and_claim_is_defined():
    """Every model's and evaluation's overrides are keys of the project's config (a typo would only
    show hours into a run), and every claim names rows and a column of its group."""
    for key, model in abl.MODELS.items():
        assert abl.model_datasets(model.config, model.opts), key
    for row in abl.ROWS:
        assert row.model in abl.MODELS and row.group in abl.GROUPS
        if row.eval_config:
            assert abl.model_datasets(row.eval_config, row.eval_opts), row.key
    for group in abl.GROUPS.values():
        headers = {c[0] for c in group.columns}
        for a, relation, b, column in group.claims:
            assert a in abl.ROW_BY_KEY and b in abl.ROW_BY_KEY and relation in (">", "<", ">=") and column in headers
