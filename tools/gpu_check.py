#!/usr/bin/env python
"""``make gpu-check``: everything ovss-d2 checks and measures on a GPU, in one command.

    python tools/gpu_check.py                                   # planned: under 8 minutes on one GPU
    python tools/gpu_check.py --quick                           # planned: under 5 (neither timed yet)
    python tools/gpu_check.py --sed-checkout ~/SED --err-seg-checkout ~/ERR-Seg   # + the authors' code
    python tools/gpu_check.py --dry-run                         # the plan only
    python tools/gpu_check.py --device cpu --smoke              # the tool's own check, tiny models, CPU

Steps, cheapest first (GPU time often comes in quarter hours: a run cut short still leaves the
tables of every finished step; the summary is rewritten after each one):

1. the environment: GPU, driver, torch, CUDA, cuDNN, and which detectron2 runs (ours, built from
   the v0.6 sources without operators, or an upstream build with CUDA operators);
2. the CUDA half of the device-parametrised tests (``pytest -m cuda tests/test_device.py``);
3. the golden tests on CUDA, TF32 off, within 1e-4 of the authors' stored outputs
   (``OVSS_D2_TEST_DEVICE=cuda``; ConvNeXt-B first, ConvNeXt-L last and not in ``--quick``);
4. ``tools/benchmark.py`` on SED-B 768 (early rejection off) and ERR-Seg-B 640 (CRM 32) at 150 /
   459 / 847 classes (``--quick``: 150 and 847) on one 640 x 853 image: fp32, then bf16 +
   channels-last, then (not in ``--quick``) the same with ``torch.compile``; latency median and
   p90, peak CUDA memory;
5. training images/s at batch 1 and 4 with each method's AMP setting (ERR-Seg: fp16 with the
   gradient scaler; SED: fp32). ``--quick``: ERR-Seg at batch 1;
6. with ``--sed-checkout`` / ``--err-seg-checkout`` (git checkouts of the authors' repositories;
   the GPU machine may have no network): their code on the same image, weights and settings, in
   a process of its own (``tools/golden/time_authors.py``), each right after ours, so that every
   speed and memory figure is a ratio measured side by side. Without them the summary says so
   and measures ours alone.

Writes ``<output-dir>/*_gpu.{md,json}`` (``_cpu`` with ``--device cpu``): one table per model and
setting, and ``gpu_check_gpu.{md,json}``, the summary: environment, each step's status, time and
command, and the side-by-side table (ours / theirs). Exits non-zero when any step failed (or was
not run: ``--time-limit``).
"""
import argparse
import fnmatch
import json
import os
import platform
import shlex
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(HERE, "golden"))
sys.path.insert(0, HERE)

# model key -> our config, the authors' method, the class limit (SED's early rejection off, ERR-Seg's
# CRM N as in the issue's measurements of the authors' code), config overrides
MODELS = {
    "sed_b_768": {"config": "configs/sed/sed_convnext_b_768.yaml", "method": "sed", "topk": 0, "opts": []},
    "err_seg_b_640": {"config": "configs/err_seg/err_seg_convnext_b_640.yaml", "method": "err_seg", "topk": 32,
                      "opts": []},
}
SMOKE_MODELS = {  # --smoke: the ToyWorld configs at 64 x 64, random weights
    "sed_b_768": {"config": "configs/toy/sed_toy.yaml", "method": "sed", "topk": 0,
                  "opts": ["MODEL.SED.CLIP_RESOLUTION", "(64, 64)"]},
    "err_seg_b_640": {"config": "configs/toy/err_seg_toy.yaml", "method": "err_seg", "topk": 3,
                      "opts": ["MODEL.ERR_SEG.CLIP_RESOLUTION", "(64, 64)",
                               "MODEL.ERR_SEG.TEST_RESOLUTION", "(64, 64)"]},
}
VARIANTS = ["fp32", "bf16-channels-last", "bf16-channels-last-compile"]
STEP_TIMEOUT_S = {"tests": 240, "golden": 300, "inference": 300, "train": 300, "authors": 300}


class Step:
    """One command of the plan: ``argv`` run as ``python argv...`` in the repository (``env`` added),
    or, with ``--smoke``, our own tools in this process (``module.main(argv[1:])``); ``outputs``: the
    table it writes."""

    def __init__(self, name: str, kind: str, argv, env=None, outputs=()):
        self.name, self.kind, self.argv, self.env = name, kind, list(argv), dict(env or {})
        self.outputs = list(outputs)
        self.status, self.seconds, self.detail = "planned", 0.0, ""

    def command(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in self.env.items())
        return (env + " " if env else "") + "python " + shlex.join(self.argv)

    def summary(self) -> dict:
        return {"name": self.name, "kind": self.kind, "status": self.status, "seconds": round(self.seconds, 1),
                "command": self.command(), "outputs": self.outputs, "detail": self.detail}


# ---- the plan -----------------------------------------------------------------------------------
def plan(args) -> list:
    """Every step in the order it runs (cheapest first)."""
    quick, smoke, out = args.quick or args.smoke, args.smoke, args.output_dir
    suffix = "gpu" if args.device.startswith("cuda") else "cpu"
    models = SMOKE_MODELS if smoke else MODELS
    checkouts = {"sed": args.sed_checkout, "err_seg": args.err_seg_checkout}
    vocab = ["4", "6"] if smoke else (["150", "847"] if quick else ["150", "459", "847"])
    image = ["48", "64"] if smoke else ["640", "853"]
    runs = ["--runs", "1", "--warmup", "0"] if smoke else ["--runs", "5", "--warmup", "2"]
    steps = []
    if not smoke:
        steps.append(Step("CUDA tests", "tests", ["-m", "pytest", "tests/test_device.py", "-m", "cuda", "-q"]))
        steps.append(Step("golden tests ConvNeXt-B", "golden", ["-m", "pytest", "tests/test_golden.py", "-q"],
                          env={"OVSS_D2_TEST_DEVICE": args.device, "OVSS_D2_GOLDEN_SIZES": "b"}))
    first_write = set()

    def bench(key, variant, train=False, batches=("1",)):
        m = models[key]
        name = f"{key}_{'train' if train else 'vocab'}_{suffix}"
        argv = ["tools/benchmark.py", "--config-file", m["config"], "--device", args.device, *runs,
                "--output", os.path.join(out, name)]
        if name in first_write:  # one table per model and mode: the later variants are appended
            argv.append("--append")
        first_write.add(name)
        if train:  # the config's SOLVER.AMP: ERR-Seg fp16 with the gradient scaler, SED fp32
            argv += ["--train", "--batch-sizes", *batches, "--train-labels", "blocks"]  # time_authors.py's batch
            argv += ["--train-classes", "5", "--image-size", "64", "64"] if smoke else []
        else:
            argv += ["--variant", variant, "--vocab-sizes", *vocab, "--image-size", *image, "--random-text",
                     "--topk", str(m["topk"])]
        return argv + (["--opts", *m["opts"]] if m["opts"] else []), os.path.join(out, name)

    def authors(key, train=False, batches=("1",)):
        m = models[key]
        checkout = checkouts[m["method"]]
        if not checkout:
            return None
        name = f"authors_{key}_{'train' if train else 'vocab'}_{suffix}"
        argv = ["tools/golden/time_authors.py", m["method"], checkout, "--device", args.device, *runs,
                "--output", os.path.join(out, name)]
        argv += (["--train", "--batch-sizes", *batches] if train
                 else ["--vocab-sizes", *vocab, "--image-size", *image, "--crm", str(m["topk"])])
        return Step(f"authors' {key} {'training' if train else 'fp32'}", "authors", argv,
                    outputs=[os.path.join(out, name)])

    for variant in VARIANTS:
        if variant.endswith("compile") and quick:
            continue
        for key in models:
            argv, output = bench(key, variant)
            steps.append(Step(f"ours {key} {variant}", "inference", argv, outputs=[output]))
            if variant == "fp32":
                theirs = authors(key)
                if theirs:
                    steps.append(theirs)
        if variant == "bf16-channels-last":  # training before the (slow to compile) compile variant
            train = [("err_seg_b_640", ("1",))] if quick else [("err_seg_b_640", ("1", "4")), ("sed_b_768", ("1", "4"))]
            for key, batches in train:
                argv, output = bench(key, None, train=True, batches=batches)
                steps.append(Step(f"ours {key} training", "train", argv, outputs=[output]))
                theirs = authors(key, train=True, batches=batches)
                if theirs:
                    steps.append(theirs)
    if not quick:
        steps.append(Step("golden tests ConvNeXt-L", "golden", ["-m", "pytest", "tests/test_golden.py", "-q"],
                          env={"OVSS_D2_TEST_DEVICE": args.device, "OVSS_D2_GOLDEN_SIZES": "l"}))
    if args.steps:
        steps = [s for s in steps if any(fnmatch.fnmatch(s.name, p) for p in args.steps)]
    return steps


# ---- the environment ----------------------------------------------------------------------------
def detectron2_build() -> dict:
    """Which detectron2 this environment imports: ours (``pb1-detectron2``, the v0.6 Python sources
    built by ``tools/install_env.sh`` without operators) or another build (upstream, from source,
    with or without CUDA operators), and whether upstream's Pillow / NumPy fixes are in it."""
    from importlib import metadata

    import detectron2
    import detectron2_fixes  # tools/

    info = {"version": getattr(detectron2, "__version__", "?"), "path": os.path.dirname(detectron2.__file__),
            "fixes": detectron2_fixes.state()}
    try:
        metadata.distribution(detectron2_fixes.OUR_DISTRIBUTION)
        ours = True
    except metadata.PackageNotFoundError:
        ours = False
    try:
        from detectron2 import _C

        cuda_ops = bool(_C.has_cuda()) if hasattr(_C, "has_cuda") else False
        ops_cuda = _C.get_cuda_version() if hasattr(_C, "get_cuda_version") else "?"
    except ImportError:
        cuda_ops, ops_cuda = False, "no operator module"
    info["cuda_operators"] = cuda_ops
    if ours:
        info["build"] = "ours: v0.6 sources (pb1-detectron2), no C++/CUDA operators"
    else:
        info["build"] = ("upstream build with CUDA operators (CUDA " + str(ops_cuda) + ")" if cuda_ops
                         else "another build without CUDA operators")
    return info


def environment_info(device: str) -> dict:
    import torch
    from benchmark_timing import environment, load_average

    env = environment(device if (not device.startswith("cuda") or torch.cuda.is_available()) else "cpu")
    env["detectron2"] = detectron2_build()
    env["load_average"] = load_average()
    env["host"] = platform.node()
    return env


# ---- running and reporting ----------------------------------------------------------------------
def run_step(step: Step, in_process: bool, log) -> None:
    start = time.perf_counter()
    try:
        if in_process:
            import importlib.util

            path = os.path.join(REPO, step.argv[0])
            spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            module.main(step.argv[1:])
            step.status = "ok"
        else:
            proc = subprocess.run([sys.executable, *step.argv], cwd=REPO, env={**os.environ, **step.env},
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=STEP_TIMEOUT_S.get(step.kind, 300))
            log.write(proc.stdout)
            step.status = "ok" if proc.returncode == 0 else "failed"
            step.detail = "" if proc.returncode == 0 else f"exit {proc.returncode}: " + tail(proc.stdout)
    except subprocess.TimeoutExpired as e:
        step.status, step.detail = "failed", f"timed out after {e.timeout} s"
    except (Exception, SystemExit) as e:  # noqa: BLE001 - an in-process step's error is reported like an exit
        step.status, step.detail = "failed", f"{type(e).__name__}: {e}"
    step.seconds = time.perf_counter() - start


def tail(text: str, lines: int = 6) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])


def side_by_side(steps) -> list:
    """Rows pairing each of the authors' measurements with ours on the same model, mode, classes
    and batch: speed ratio (their latency / ours) and memory ratio (our peak / theirs)."""
    rows = []
    for step in steps:
        if step.kind != "authors" or step.status != "ok":
            continue
        theirs_path = step.outputs[0] + ".json"
        ours_path = theirs_path.replace(os.sep + "authors_", os.sep)
        if not (os.path.isfile(theirs_path) and os.path.isfile(ours_path)):
            continue
        with open(theirs_path) as f:
            theirs = json.load(f)["rows"]
        with open(ours_path) as f:
            ours = json.load(f)["rows"]
        model = os.path.basename(ours_path)[:-len(".json")]
        for t in theirs:
            for o in ours:
                if (o["mode"], o.get("classes"), o["batch"]) == (t["mode"], t.get("classes"), t["batch"]):
                    rows.append({"table": model, "mode": t["mode"], "classes": t.get("classes"), "batch": t["batch"],
                                 "ours": o.get("variant") or o.get("switches", ""),
                                 "ours_ms": o["total_ms_median"], "theirs_ms": t["total_ms_median"],
                                 "speed_ratio": t["total_ms_median"] / o["total_ms_median"],
                                 "ours_gib": o["peak_mem_gib"], "theirs_gib": t["peak_mem_gib"],
                                 "memory_ratio": o["peak_mem_gib"] / max(t["peak_mem_gib"], 1e-9)})
    return rows


def write_summary(path: str, args, env: dict, steps, started: float) -> None:
    pairs = side_by_side(steps)
    data = {"mode": "smoke" if args.smoke else "quick" if args.quick else "full", "device": args.device,
            "environment": env, "seconds": round(time.time() - started, 1),
            "authors_checkouts": {"sed": args.sed_checkout or None, "err_seg": args.err_seg_checkout or None},
            "steps": [s.summary() for s in steps], "side_by_side": pairs}
    d2 = env.get("detectron2", {})
    md = [f"# make gpu-check ({data['mode']})", "",
          f"{env.get('machine', '?')}; driver {env.get('driver') or 'n/a'}; torch {env.get('torch')}, "
          f"CUDA {env.get('cuda') or 'n/a'}, cuDNN {env.get('cudnn') or 'n/a'}; detectron2 {d2.get('version', '?')}: "
          f"{d2.get('build', '?')} (fixes: {d2.get('fixes', '?')}); load average {env.get('load_average')} at the "
          f"start; {data['seconds']:.0f} s so far.", ""]
    if not (args.sed_checkout or args.err_seg_checkout):
        md += ["No checkout of the authors' code was given (--sed-checkout, --err-seg-checkout): ours measured "
               "alone, no side-by-side ratios.", ""]
    md += ["| step | status | s | output | detail |", "| --- | --- | ---: | --- | --- |"]
    for s in steps:
        outputs = ", ".join(f"`{os.path.relpath(o, REPO)}.md`" for o in s.outputs)
        md.append(f"| {s.name} | {s.status} | {s.seconds:.0f} | {outputs} | {s.detail.replace('|', '/')} |")
    if pairs:
        note = " --smoke: ours are the tiny ToyWorld models, theirs full size; these ratios mean nothing." \
            if args.smoke else ""
        md += ["", "Side by side (the same run, the same device): speed = their latency / ours, memory = our peak / "
               f"theirs.{note}", "",
               "| table | mode | classes | batch | ours | ours ms | theirs ms | speed | ours GiB | theirs GiB "
               "| memory |",
               "| --- | --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
        md += [f"| {p['table']} | {p['mode']} | {p['classes']} | {p['batch']} | {p['ours']} | {p['ours_ms']:.1f} | "
               f"{p['theirs_ms']:.1f} | {p['speed_ratio']:.2f}x | {p['ours_gib']:.2f} | {p['theirs_gib']:.2f} | "
               f"{p['memory_ratio']:.2f} |" for p in pairs]
    from benchmark_timing import write_tables

    write_tables(path, "\n".join(md), data)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="under 5 minutes: see the steps above")
    p.add_argument("--sed-checkout", default="", help="a git checkout of https://github.com/xb534/SED")
    p.add_argument("--err-seg-checkout", default="", help="a git checkout of https://github.com/lchen1019/ERR-Seg")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --smoke: the tool's own check)")
    p.add_argument("--output-dir", default=os.path.join(REPO, "docs", "benchmarks"))
    p.add_argument("--steps", nargs="+", default=[], metavar="PATTERN",
                   help="run only the steps whose names match (shell patterns, e.g. 'ours err_seg*')")
    p.add_argument("--dry-run", action="store_true", help="write and print the plan, run nothing")
    p.add_argument("--time-limit", type=float, default=0, metavar="S",
                   help="start no step after S seconds (the GPU lease's end); the steps left are listed as not run")
    p.add_argument("--smoke", action="store_true",
                   help="tiny ToyWorld models and vocabularies, in this process, no tests: checks the tool itself")
    args = p.parse_args(argv)
    for flag, method in (("sed_checkout", "sed"), ("err_seg_checkout", "err_seg")):
        if getattr(args, flag):
            from time_authors import check_checkout

            setattr(args, flag, check_checkout(method, getattr(args, flag)))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.output_dir = os.path.abspath(args.output_dir)
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available() and not args.dry_run:
        print("gpu-check: no CUDA device here. Run it on a GPU machine, or check the tool itself with "
              "`python tools/gpu_check.py --device cpu --smoke`.", file=sys.stderr)
        return 2
    suffix = "gpu" if args.device.startswith("cuda") else "cpu"
    summary = os.path.join(args.output_dir, f"gpu_check_{suffix}")
    started = time.time()
    env = environment_info(args.device)
    steps = plan(args)
    write_summary(summary, args, env, steps, started)
    print(f"gpu-check: {len(steps)} steps, summary in {os.path.relpath(summary, REPO)}.md", flush=True)
    for s in steps:
        print(f"  {s.name}: {s.command()}", flush=True)
    if args.dry_run:
        return 0
    with open(summary + ".log", "w") as log:
        for s in steps:
            if args.time_limit and time.time() - started > args.time_limit:
                s.status, s.detail = "not run", f"--time-limit {args.time_limit:g} s reached"
                continue
            s.status = "running"
            write_summary(summary, args, env, steps, started)
            print(f"gpu-check: {s.name} ...", flush=True)
            run_step(s, args.smoke and s.kind != "authors", log)  # their open_clip must not meet ours
            log.flush()
            print(f"gpu-check: {s.name}: {s.status} ({s.seconds:.0f} s) {s.detail}", flush=True)
            write_summary(summary, args, env, steps, started)
    write_summary(summary, args, env, steps, started)
    failed = [s.name for s in steps if s.status != "ok"]
    print(f"gpu-check: {len(steps) - len(failed)} of {len(steps)} steps ok" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
