#!/usr/bin/env python
"""Speed and memory of the authors' released SED / ERR-Seg code, for side-by-side tables with
``tools/benchmark.py`` (``make gpu-check`` runs both in the same session on the same GPU).

    python tools/golden/time_authors.py sed /path/to/SED-checkout --vocab-sizes 150 459 847 \\
        --image-size 640 853 --output docs/benchmarks/authors_sed_b_768_gpu
    python tools/golden/time_authors.py err_seg /path/to/ERR-Seg-checkout --train --batch-sizes 1 4 \\
        --output docs/benchmarks/authors_err_seg_b_640_train_gpu

Like ``make_golden.py`` (whose shims and model building it uses): the checkout is used as it is,
in a process of its own that imports nothing of ovss-d2 (their vendored ``open_clip`` is put first
on the import path), their einops on ``PYTHONPATH``. Their ConvNeXt-B config (SED: 768, early
rejection off; ERR-Seg: 640, ``SAMPLE_CLASSES_NUM`` from ``--crm``), every weight seeded by its key
(``seeded.py``: the weights our side loads in the golden tests), the same random input image as
``tools/benchmark.py`` (torch generator seeded 0) and synthetic class names.

Inference: ``--warmup`` untimed and ``--runs`` timed forwards of ``model([{"image": ...}])`` per
vocabulary size; median and p90 latency, peak CUDA memory (``benchmark_timing.py``, the code our
benchmark uses). SED's text embeddings are random unit vectors of their shape (as our
``--random-text``): their constructor computes them once per vocabulary, outside any forward.
ERR-Seg runs its text encoder in the first forward and caches it (untimed, in the warm-up).
``--train``: full training steps (forward, backward, AdamW step; their config's ``SOLVER.AMP``,
fp16 with a gradient scaler as detectron2's AMP trainer) on random images and block labels (a 4 x 4
grid of random classes: ERR-Seg's training class selection fails when every class is in the ground
truth, as with per-pixel random labels); ``tools/benchmark.py --train-labels blocks`` gives ours the
same batch.
"""
import argparse
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))  # tools/: benchmark_timing.py

CONFIGS = {"sed": "configs/convnextB_768.yaml", "err_seg": "configs/convnextB_640.yaml"}
REQUIRED = {"sed": "sed/__init__.py", "err_seg": "err_seg/__init__.py"}


def check_checkout(method: str, checkout: str) -> str:
    """The checkout's absolute path; a clear error when it is not the authors' repository."""
    path = os.path.abspath(checkout)
    repo = {"sed": "https://github.com/xb534/SED", "err_seg": "https://github.com/lchen1019/ERR-Seg"}[method]
    for rel in (REQUIRED[method], CONFIGS[method], "open_clip/src/open_clip/__init__.py"):
        if not os.path.isfile(os.path.join(path, rel)):
            raise SystemExit(f"{checkout}: no {rel}; pass a git checkout of {repo} (its vendored open_clip "
                             f"included) as the {method} checkout.")
    return path


def class_names(n: int):
    return [f"class number {i}" for i in range(n)]


def build_theirs(method: str, checkout: str, classes, device: str, crm: int, train: bool = False):
    """(model, cfg): their model with seeded weights on ``device``, ``classes`` its vocabulary."""
    import torch
    from detectron2.modeling import build_model
    from make_golden import load_cfg, load_seeded

    if method == "sed":
        from sed import add_sed_config as add_config
        from sed.modeling.transformer.sed_predictor import SEDPredictor
        from sed.third_party import imagenet_templates

        real = SEDPredictor.class_embeddings
        SEDPredictor.class_embeddings = lambda self, names, templates, clip: torch.zeros(len(templates), len(names), 1)
        opts = ["MODEL.SEM_SEG_HEAD.POOLING_SIZES", "[2,2]" if train else "[1,1]"]  # training / eval.sh
    else:
        from err_seg import add_err_seg_config as add_config

        opts = ["MODEL.SEM_SEG_HEAD.SAMPLE_CLASSES_NUM", str(crm)] if crm else []
    cfg = load_cfg(checkout, add_config, CONFIGS[method], classes, opts, device)
    model = build_model(cfg)
    load_seeded(model)
    model.to(device)
    if method == "sed":
        SEDPredictor.class_embeddings = real
        p = model.sem_seg_head.predictor
        with torch.no_grad():  # their shape (templates, classes, dim); random values (see above)
            one = real(p, p.class_texts[:1], imagenet_templates.IMAGENET_TEMPLATES, p.clip_model)
        g = torch.Generator().manual_seed(len(classes))
        emb = torch.nn.functional.normalize(torch.randn(len(classes), one.shape[0], one.shape[-1], generator=g), dim=-1)
        p.text_features = p.text_features_test = emb.to(device)
    return model, cfg


def time_inference(model, device, image, runs: int, warmup: int, autocast: str):
    import torch
    from benchmark_timing import PeakMemory, latency_row, sync

    model.eval()
    batch = [{"image": image, "height": image.shape[-2], "width": image.shape[-1]}]
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(autocast)
    times, first = [], []
    with torch.no_grad(), torch.autocast(torch.device(device).type, dtype=dtype, enabled=dtype is not None), \
            PeakMemory(device) as mem:
        for i in range(warmup + runs):
            sync(device)
            t0 = time.perf_counter()
            model(batch)
            sync(device)
            (first if i < warmup else times).append(time.perf_counter() - t0)
    return {**latency_row(times, 1, mem), "warmup_ms": [1000 * t for t in first]}


def time_training(model, cfg, device, size: int, num_classes: int, batch: int, runs: int, warmup: int):
    import torch
    from benchmark_timing import PeakMemory, latency_row, sync, training_batch

    model.train()
    data = training_batch(batch, size, size, num_classes, "blocks")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    amp = bool(cfg.SOLVER.AMP.ENABLED) and torch.device(device).type == "cuda"
    scaler = torch.amp.GradScaler("cuda") if amp else None
    times = []
    with PeakMemory(device) as mem:
        for i in range(warmup + runs):
            sync(device)
            t0 = time.perf_counter()
            with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                losses = model(data)
            loss = sum(losses.values())
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return {**latency_row(times, batch, mem), "amp": "float16" if amp else "fp32"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("method", choices=sorted(CONFIGS))
    p.add_argument("checkout", help="a git checkout of the authors' repository")
    p.add_argument("--vocab-sizes", type=int, nargs="+", default=[150, 459, 847])
    p.add_argument("--image-size", type=int, nargs=2, default=[640, 853], metavar=("H", "W"))
    p.add_argument("--crm", type=int, default=32, help="ERR-Seg's SAMPLE_CLASSES_NUM (CRM N; 0: their config's)")
    p.add_argument("--autocast", choices=["none", "bfloat16", "float16"], default="none",
                   help="inference autocast (their code has none; default: fp32 as they ran it)")
    p.add_argument("--train", action="store_true", help="training throughput instead of inference")
    p.add_argument("--train-classes", type=int, default=171)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cuda")
    p.add_argument("--output", default="", help="path prefix for .md and .json")
    args = p.parse_args(argv)
    if min(args.vocab_sizes + args.batch_sizes) < 1 or args.runs < 1 or args.warmup < 0:
        p.error("vocabulary sizes, batch sizes and --runs must be >= 1, --warmup >= 0")
    return args


def main(argv=None):
    args = parse_args(argv)
    checkout = check_checkout(args.method, args.checkout)
    import importlib.util

    if importlib.util.find_spec("einops") is None:
        raise SystemExit("The authors' code needs einops (their requirements.txt): pip install einops, or put a "
                         "folder holding it on PYTHONPATH.")
    commit = subprocess.run(["git", "-C", checkout, "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "(not a git checkout)"
    from make_golden import install_shims

    install_shims(checkout, args.device)
    import torch
    from benchmark_timing import environment, load_average, write_tables

    load_start = load_average()
    rows = []
    if args.train:
        model, cfg = build_theirs(args.method, checkout, class_names(args.train_classes), args.device, args.crm, True)
        size = int(cfg.INPUT.CROP.SIZE[0])
        for b in args.batch_sizes:
            row = time_training(model, cfg, args.device, size, args.train_classes, b, args.runs, args.warmup)
            rows.append({"mode": "train", "classes": args.train_classes, "resolution": [size, size],
                         "train_labels": "blocks", **row})
            print(f"theirs train B={b}: {row['images_per_s']:.3g} images/s, peak {row['peak_mem_gib']:.2f} GiB",
                  flush=True)
            model.zero_grad(set_to_none=True)
    else:
        g = torch.Generator().manual_seed(0)  # tools/benchmark.py's image
        image = torch.randint(0, 256, (3, *args.image_size), dtype=torch.uint8, generator=g).to(args.device)
        for n in args.vocab_sizes:
            model, _ = build_theirs(args.method, checkout, class_names(n), args.device, args.crm)
            row = time_inference(model, args.device, image, args.runs, args.warmup, args.autocast)
            rows.append({"mode": "inference", "classes": n, "autocast": args.autocast, **row})
            print(f"theirs N={n}: {row['total_ms_median']:.1f} ms (p90 {row['total_ms_p90']:.1f}), "
                  f"peak {row['peak_mem_gib']:.2f} GiB", flush=True)
            del model
            if torch.device(args.device).type == "cuda":
                torch.cuda.empty_cache()
    meta = {"method": args.method, "authors_commit": commit, "config": CONFIGS[args.method],
            "environment": environment(args.device), "load_average": [load_start, load_average()],
            "argv": list(argv if argv is not None else sys.argv[1:]), "rows": rows}
    at = commit if " " in commit else commit[:8]
    header = (f"the authors' {args.method} ({CONFIGS[args.method]} at {at}): {meta['environment']['machine']}, "
              f"torch {torch.__version__}, random seeded weights; load average {load_start} at the start")
    md = [header, "", "| mode | classes | batch | total ms (median) | p90 | images/s | peak GiB |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    md += [f"| {r['mode']} | {r['classes']} | {r['batch']} | {r['total_ms_median']:.1f} | {r['total_ms_p90']:.1f} | "
           f"{r['images_per_s']:.3g} | {r['peak_mem_gib']:.2f} |" for r in rows]
    print("\n".join(md))
    if args.output:
        write_tables(args.output, "\n".join(md), meta)
    return rows


if __name__ == "__main__":
    main()
