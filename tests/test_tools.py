import json
import os
import subprocess
import sys

from helpers import REPO


def test_benchmark_tool_writes_its_table(tmp_path):
    out = str(tmp_path / "bench")
    cmd = [sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--config-file",
           os.path.join(REPO, "configs", "toy", "err_seg_toy.yaml"), "--vocab-sizes", "6", "--topk", "0", "3",
           "--runs", "1", "--warmup", "0", "--image-size", "60", "80", "--random-text", "--output", out,
           "--opts", "MODEL.ERR_SEG.TEST_RESOLUTION", "(64, 64)"]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, timeout=300)
    rows = json.load(open(out + ".json"))["rows"]
    assert [(r["classes"], r["topk"]) for r in rows] == [(6, 0), (6, 3)]
    assert all(r["decoder_ms_median"] > 0 and r["encoder_ms_median"] > 0 for r in rows)
    assert "| CRM N |" in open(out + ".md").read()


def test_crm_benchmark_tool_runs(tmp_path):
    out = str(tmp_path / "crm")
    cmd = [sys.executable, os.path.join(REPO, "tools", "benchmark_crm.py"), "--classes", "30", "--batch", "2",
           "--size", "8", "--keep", "5", "--runs", "2", "--output", out]
    subprocess.run(cmd, check=True, capture_output=True, cwd=REPO, timeout=300)
    rows = json.load(open(out + ".json"))
    assert rows[0]["classes"] == 30 and rows[0]["loop_ms"] > 0
