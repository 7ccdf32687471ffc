import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import REPO


def _tool(name):
    """Import tools/<name>.py as a module (the tools are scripts, not a package)."""
    sys.path.insert(0, os.path.join(REPO, "tools"))
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ERR_TOY = os.path.join(REPO, "configs", "toy", "err_seg_toy.yaml")
SED_TOY = os.path.join(REPO, "configs", "toy", "sed_toy.yaml")


def test_benchmark_tool_writes_its_table(tmp_path):
    out = str(tmp_path / "bench")
    _tool("benchmark").main(["--config-file", ERR_TOY, "--vocab-sizes", "6", "--topk", "0", "3", "--runs", "2",
                             "--warmup", "0", "--image-size", "60", "80", "--random-text", "--flops",
                             "--output", out, "--opts", "MODEL.ERR_SEG.TEST_RESOLUTION", "(64, 64)"])
    data = json.load(open(out + ".json"))
    rows = data["rows"]
    assert [(r["classes"], r["topk"], r["kept"]) for r in rows] == [(6, 0, 6), (6, 3, 3)]
    for r in rows:
        assert r["decoder_ms_median"] > 0 and r["encoder_ms_median"] > 0 and r["post_ms_median"] >= -1e-6
        assert r["total_ms_p90"] >= r["total_ms_median"] > r["decoder_ms_median"]
        assert r["images_per_s"] == pytest.approx(1000 / r["total_ms_median"])
        assert r["peak_mem_gib"] >= r["mem_before_gib"] > 0 and r["memory_method"] == "vmhwm_reset"
    assert rows[0]["gflops"] > rows[1]["gflops"] > 0  # CRM: fewer classes decoded, fewer flops
    md = open(out + ".md").read()
    assert "| CRM N |" in md and data["machine"].startswith("CPU")
    assert "load average" in md and "| GFLOPs |" in md


def test_benchmark_sweeps_resolution_batch_and_appends(tmp_path):
    bench = _tool("benchmark")
    out = str(tmp_path / "sweep")
    common = ["--config-file", SED_TOY, "--vocab-sizes", "5", "--runs", "1", "--warmup", "0", "--image-size", "40",
              "50", "--random-text", "--output", out]
    bench.main(common + ["--resolutions", "64", "96", "--batch-sizes", "1", "2", "--topk", "0"])
    bench.main(common + ["--topk", "2", "--append", "--opts", "MODEL.SED.CLIP_RESOLUTION", "(64, 64)"])
    rows = json.load(open(out + ".json"))["rows"]
    assert [(tuple(r["resolution"]), r["batch"], r["topk"]) for r in rows] == [
        ((64, 64), 1, 0), ((64, 64), 2, 0), ((96, 96), 1, 0), ((96, 96), 2, 0), ((64, 64), 1, 2)]
    assert rows[1]["images_per_s"] == pytest.approx(2000 / rows[1]["total_ms_median"])


def test_benchmark_training_throughput(tmp_path):
    bench = _tool("benchmark")
    rows = bench.main(["--config-file", ERR_TOY, "--train", "--train-classes", "5", "--batch-sizes", "2",
                       "--runs", "1", "--warmup", "1", "--image-size", "64", "64", "--output", str(tmp_path / "t")])
    (row,) = rows
    assert row["mode"] == "train" and row["batch"] == 2 and row["classes"] == 5
    assert row["images_per_s"] == pytest.approx(2000 / row["total_ms_median"])
    assert row["text_encoder_in_step"]  # ERR-Seg fine-tunes its text encoder: it runs in every step
    assert "training steps" in open(str(tmp_path / "t.md")).read()


def test_peak_memory_sees_a_temporary_allocation():
    # in a fresh interpreter: a long-lived process may reuse resident pages it freed before, so
    # a new allocation need not raise its resident set
    code = ("import sys, numpy as np, torch; sys.path.insert(0, 'tools'); import benchmark as b\n"
            "with b.PeakMemory(torch.device('cpu')) as m:\n"
            "    x = np.ones(64 * 2**20 // 8); del x\n"  # 64 MiB, touched, then freed
            "print(m.method, m.peak - m.before)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                         check=True).stdout.split()
    assert out[-2] == "vmhwm_reset" and int(out[-1]) >= 60 * 2**20


def test_sdpa_flops_are_counted_by_hand():
    bench = _tool("benchmark")
    from fvcore.nn import FlopCountAnalysis

    class Attn(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    q, k, v = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 7, 4), torch.randn(2, 3, 7, 6)
    analysis = FlopCountAnalysis(Attn(), (q, k, v)).unsupported_ops_warnings(False)
    analysis.set_op_handle("aten::scaled_dot_product_attention", bench.sdpa_flop_jit)
    assert analysis.total() == 2 * 3 * 5 * 7 * (4 + 6)  # Q K^T: L*S*D, weights x V: L*S*Dv multiply-adds


def test_structured_text_makes_matching_classes_win_the_first_rejection():
    """--structured-text: SED's first auxiliary head (random weights) scores each of the S matching
    classes above every random class on average over the pixels, and early rejection with k = S
    keeps the matching classes and drops most of the others (noise embeddings would keep nearly all)."""
    bench = _tool("benchmark")
    from ovss_d2.engine import OVSSTrainer, load_config
    from ovss_d2.modeling.cost_map import cost_map

    cfg = load_config(SED_TOY, ["MODEL.CLIP.PRETRAINED", "none", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
                                "MODEL.SED.CLIP_RESOLUTION", "(128, 128)", "MODEL.TEXT.TEMPLATES", "imagenet_80"])
    torch.manual_seed(0)
    model = OVSSTrainer.build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 128, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = bench.model_input(model, image, 1)
    n, s = 40, 6
    emb = bench.structured_text(model, x, n, s)
    assert emb.shape == (n, 80, model.clip.embed_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(n, 80), atol=1e-5)
    model.set_vocabulary([f"c{i}" for i in range(n)])
    with torch.no_grad():
        dense = model.clip.dense_embedding(model.clip.forward_features(x))
        scores = model.decoder.aux_heads[0](model.decoder.cost_embed(cost_map(dense, emb))).view(n, -1).mean(1)
        assert scores[:s].min() > scores[s:].max()
        model.early_rejection_topk = s
        bench.use_fixed_embeddings(model, emb)
        kept = set(model.predict(x)["kept"].tolist())
        bench.use_fixed_embeddings(model, bench.random_text(model, n))
        kept_noise = set(model.predict(x)["kept"].tolist())
    assert set(range(s)) <= kept and len(kept) < n // 3 < len(kept_noise)


def test_fast_paths_benchmark_tool(tmp_path, small_tiny_clip):
    # trained CLIP weights: bf16 is compared on the activations of a trained network, not of a random one
    tool = _tool("benchmark_fast_paths")
    rows = tool.main(["--config-file", ERR_TOY, "--classes", "12", "--topk", "4", "--runs", "1", "--image-size",
                      "48", "48", "--class-chunk", "5", "--output", str(tmp_path / "fp"),
                      "--opts", "MODEL.ERR_SEG.TEST_RESOLUTION", "(64, 64)",
                      "MODEL.ERR_SEG.CLIP_RESOLUTION", "(128, 128)", "MODEL.CLIP.PRETRAINED", small_tiny_clip[1]])
    by_name = {r["variant"]: r for r in rows}
    assert by_name["fp32 (plain)"]["speedup"] == 1.0 and by_name["fp32 (plain)"]["max_abs_prob_diff"] == 0
    assert by_name["fp32, rejection code before this work"]["host_syncs"] == 1  # the CRM weights' host copy
    assert by_name["fp32 (plain)"]["host_syncs"] == 0
    assert by_name["channels-last"]["max_abs_prob_diff"] < 1e-5
    assert by_name["bf16 + channels-last + class chunks of 5"]["max_abs_prob_diff"] < 0.03
    assert "| bf16 autocast |" in open(str(tmp_path / "fp.md")).read()


def test_crm_benchmark_tool_runs(tmp_path):
    out = str(tmp_path / "crm")
    cmd = [sys.executable, os.path.join(REPO, "tools", "benchmark_crm.py"), "--classes", "30", "--batch", "2",
           "--size", "8", "--keep", "5", "--runs", "2", "--output", out]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, timeout=300)
    rows = json.load(open(out + ".json"))
    assert rows[0]["classes"] == 30 and rows[0]["loop_ms"] > 0


def test_zeroseg_diagnostics_oracle_bounds_the_model(tmp_path, small_tiny_clip):
    # The model names each final group with one class (no resizing at ToyWorld's test size), so the
    # oracle naming (each group's majority class) is right on at least as many pixels.
    from ovss_d2.toyworld import register_toyworld

    root, clip = small_tiny_clip
    register_toyworld(root, prefix="twd")
    tool = _tool("zeroseg_diagnostics")
    torch.manual_seed(0)
    out = tool.main(["--config-file", os.path.join(REPO, "configs/toy/zeroseg_toy.yaml"), "--weights", "none",
                     "--stats-dataset", "twd_val", "--datasets", "twd_val", "--objects-dataset", "twd_objects_val",
                     "--json", str(tmp_path / "d.json"), "MODEL.CLIP.PRETRAINED", clip])
    collapse, model = out["collapse"], out["evaluation"][0]["metrics"]["twd_val"]
    assert collapse["images"] == 60 and 1 <= collapse["groups_used"] <= 8
    assert collapse["oracle-pACC"] >= model["pACC"] - 1e-6
    assert 0 <= collapse["oracle-objects-mIoU"] <= 100
    assert json.load(open(tmp_path / "d.json"))["collapse"]["oracle-pACC"] == collapse["oracle-pACC"]
