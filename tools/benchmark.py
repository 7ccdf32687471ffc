#!/usr/bin/env python
"""Inference latency of a model across vocabulary sizes and class-rejection settings.

    python tools/benchmark.py --config-file configs/sed/sed_convnext_b_768.yaml \\
        --vocab-sizes 20 150 459 847 --topk 0 8 --runs 5 --output docs/benchmarks/sed_b_cpu

Random CLIP weights (MODEL.CLIP.PRETRAINED none) unless --opts say otherwise; the vocabulary is
N synthetic class names whose text embeddings are computed before timing (the cache makes that a
one-off; ``--random-text`` skips the text encoder and uses random unit embeddings instead, for
CPU runs with 80 templates where encoding thousands of prompts would dominate). For every
setting: warm-up runs, then the median and p90 of the end-to-end latency, with the encoder's
and the decoder's share (models with ``predict``), and the peak memory.
Writes a Markdown table and JSON.
"""
import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import ovss_d2  # noqa: E402,F401
import torch  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _percentile(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def rejection_attribute(model) -> str:
    """The knob that limits the classes reaching the decoder: SED's early-rejection k or ERR-Seg's
    CRM N (0 = off for both)."""
    for name in ("early_rejection_topk", "crm_test"):
        if hasattr(model, name):
            return name
    raise ValueError(f"{type(model).__name__} has no class-rejection setting to benchmark.")


def time_parts(model, image, runs, warmup):
    """End-to-end ``predict`` time and the decoder's share (timed by hooks around
    ``model.decoder``), in seconds; encoder = the rest (CLIP features, dense embeddings, cost maps)."""
    x = model.resize_to(((image.float() - model.pixel_mean) / model.pixel_std)[None],
                        getattr(model, "test_resolution", getattr(model, "clip_resolution", image.shape[-2:])))
    stamps = {}

    def pre_hook(module, args, kwargs=None):
        _sync(x.device)
        stamps["start"] = time.perf_counter()

    def post_hook(module, args, output):
        _sync(x.device)
        stamps["end"] = time.perf_counter()

    handles = [model.decoder.register_forward_pre_hook(pre_hook), model.decoder.register_forward_hook(post_hook)]
    total, dec = [], []
    try:
        for i in range(warmup + runs):
            _sync(x.device)
            t0 = time.perf_counter()
            model.predict(x)
            _sync(x.device)
            t1 = time.perf_counter()
            if i >= warmup:
                total.append(t1 - t0)
                dec.append(stamps["end"] - stamps["start"])
    finally:
        for h in handles:
            h.remove()
    return [t - d for t, d in zip(total, dec)], dec


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[20, 150, 459, 847])
    parser.add_argument("--topk", type=int, nargs="+", default=[0, 8],
                        help="classes limit: SED's early-rejection k or ERR-Seg's CRM N (0 = off)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--image-size", type=int, nargs=2, default=[512, 683], metavar=("H", "W"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default="", help="path prefix for .md and .json")
    parser.add_argument("--random-text", action="store_true",
                        help="random unit text embeddings instead of running the text encoder")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = parser.parse_args()

    from ovss_d2.engine import OVSSTrainer, load_config

    cfg = load_config(args.config_file, ["MODEL.CLIP.PRETRAINED", "none", "DATASETS.TRAIN", "()",
                                         "DATASETS.TEST", "()", "MODEL.DEVICE", args.device, *args.opts])
    torch.manual_seed(0)
    model = OVSSTrainer.build_model(cfg).eval()
    device = torch.device(args.device)
    image = torch.randint(0, 256, (3, *args.image_size), dtype=torch.uint8, device=device)
    rows = []
    with torch.no_grad():
        for n in args.vocab_sizes:
            model.set_vocabulary([f"class number {i}" for i in range(n)])
            if args.random_text:
                g = torch.Generator().manual_seed(n)
                emb = torch.nn.functional.normalize(
                    torch.randn(n, len(model.templates), model.clip.embed_dim, generator=g), dim=-1).to(device)
                model.class_embeddings = lambda names=None, emb=emb: emb
            model.class_embeddings()  # text encoder runs here, once, outside the timing
            for k in args.topk:
                setattr(model, rejection_attribute(model), k)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats()
                enc, dec = time_parts(model, image, args.runs, args.warmup)
                total = [a + b for a, b in zip(enc, dec)]
                row = {
                    "classes": n, "topk": k, "runs": args.runs,
                    "total_ms_median": 1000 * statistics.median(total),
                    "total_ms_p90": 1000 * _percentile(total, 0.9),
                    "encoder_ms_median": 1000 * statistics.median(enc),
                    "decoder_ms_median": 1000 * statistics.median(dec),
                    "peak_mem_gib": (torch.cuda.max_memory_allocated() if device.type == "cuda" else
                                     resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**30,
                }
                rows.append(row)
                print(f"N={n:5d} k={k:2d}  total {row['total_ms_median']:9.1f} ms (p90 {row['total_ms_p90']:9.1f})  "
                      f"encoder {row['encoder_ms_median']:8.1f}  decoder {row['decoder_ms_median']:9.1f}  "
                      f"peak {row['peak_mem_gib']:.2f} GiB", flush=True)
    machine = (torch.cuda.get_device_name(0) if device.type == "cuda" else
               f"CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    resolution = getattr(model, "test_resolution", getattr(model, "clip_resolution", ""))
    header = (f"config `{os.path.relpath(args.config_file, REPO)}`, input {args.image_size[0]}x{args.image_size[1]} "
              f"(model resolution {resolution}), {machine}, torch {torch.__version__}, "
              f"fp32, median of {args.runs} runs after {args.warmup} warm-up"
              + (", random text embeddings" if args.random_text else ""))
    knob = {"early_rejection_topk": "early rejection k", "crm_test": "CRM N"}[rejection_attribute(model)]
    md = [header, "", f"| classes | {knob} | total ms (median) | p90 | encoder ms | decoder ms | peak GiB |",
          "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        md.append(f"| {r['classes']} | {r['topk'] or 'off'} | {r['total_ms_median']:.1f} | {r['total_ms_p90']:.1f} | "
                  f"{r['encoder_ms_median']:.1f} | {r['decoder_ms_median']:.1f} | {r['peak_mem_gib']:.2f} |")
    print("\n".join(md))
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output + ".md", "w") as f:
            f.write("\n".join(md) + "\n")
        with open(args.output + ".json", "w") as f:
            json.dump({"header": header, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
