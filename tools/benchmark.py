#!/usr/bin/env python
"""Inference (and training) speed of a model: latency, throughput, peak memory and GFLOPs, swept
over vocabulary size, class-rejection setting, working resolution and batch size. One table out
(Markdown and JSON). docs/performance.md explains every column and switch.

    python tools/benchmark.py --config-file configs/sed/sed_convnext_b_768.yaml \\
        --vocab-sizes 20 150 459 847 2000 --topk 0 8 --runs 3 --random-text --flops \\
        --output docs/benchmarks/sed_b_cpu --opts TEST.AMP.ENABLED True MODEL.CHANNELS_LAST True

    python tools/benchmark.py --config-file configs/err_seg/err_seg_convnext_b_640.yaml --train \\
        --train-classes 171 --batch-sizes 1 --runs 3 --output docs/benchmarks/err_seg_b_train_cpu

Random weights (MODEL.CLIP.PRETRAINED none) unless --opts say otherwise. The vocabulary is N
synthetic names whose text embeddings exist before timing (the model's cache makes that a
one-off). ``--random-text`` uses random unit embeddings instead of running the text encoder (80
templates x 2000 names would dominate a CPU run); ``--structured-text S`` makes S of the N classes
match the image (their embeddings are k-means centres of the image's own dense CLIP embeddings,
each template's copy signed so the model's first class-rejection scorer ranks them above the rest;
the others random), so that class rejection sees scores shaped like a trained model's, not noise.

Per setting: ``--warmup`` untimed runs, then ``--runs`` timed runs of the full forward
(``model([{"image": ...}])``, preprocessing and resizing included) with hooks splitting it into
encoder (image encoder, dense embeddings, cost maps), decoder and postprocessing; median and p90;
the process's CPU time per run (user + system, all threads: less sensitive than the wall-clock
latency to other jobs on a shared machine); throughput = batch / median latency; peak memory:
CUDA ``max_memory_allocated`` or, on the CPU, the process's peak resident set size (``VmHWM``,
reset before each setting through ``/proc/self/clear_refs``), and what the forwards added to the
usage before them; GFLOPs: fvcore (one multiply-add = one flop) on one extra traced
run; the classes that reach the decoder's last layer (SED's early rejection, ERR-Seg's CRM).
The warm-up runs' latencies are kept too (``warmup_ms``: what torch.compile's compilation costs).
``--variant`` names the settings ``make gpu-check`` compares (fp32; bf16 + channels-last; the same +
torch.compile); every table names the machine, torch, CUDA and the GPU driver (``environment``).
"""
import argparse
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ovss_d2  # noqa: E402,F401
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

# the timing primitives live where the authors' code (tools/golden/time_authors.py) can import them too
from benchmark_timing import (TRAIN_LABELS, PeakMemory, environment, latency_row, load_average,  # noqa: E402,F401
                              machine_description, percentile, sync, training_batch, write_tables)

REJECTION_KNOBS = {"early_rejection_topk": "early rejection k", "crm_test": "CRM N"}
# --variant: the inference settings make gpu-check compares (config overrides, before --opts)
VARIANTS = {
    "fp32": ["TEST.AMP.ENABLED", "False", "MODEL.CHANNELS_LAST", "False", "MODEL.COMPILE.ENABLED", "False"],
    "bf16-channels-last": ["TEST.AMP.ENABLED", "True", "TEST.AMP.DTYPE", "bfloat16", "MODEL.CHANNELS_LAST", "True",
                           "MODEL.COMPILE.ENABLED", "False"],
    "bf16-channels-last-compile": ["TEST.AMP.ENABLED", "True", "TEST.AMP.DTYPE", "bfloat16", "MODEL.CHANNELS_LAST",
                                   "True", "MODEL.COMPILE.ENABLED", "True"],
}


# ---- model set-up -------------------------------------------------------------------------------
def rejection_attribute(model) -> str:
    """The knob that limits the classes reaching the decoder: SED's early-rejection k or ERR-Seg's
    CRM N (0 = off for both); "" for models without one."""
    for name in REJECTION_KNOBS:
        if hasattr(model, name):
            return name
    return ""


def resolution_attribute(model) -> str:
    """The model's fixed working resolution (what the input is resized to at inference)."""
    for name in ("test_resolution", "clip_resolution"):
        if hasattr(model, name):
            return name
    return ""


def random_text(model, n: int, seed: int = 0) -> torch.Tensor:
    """(N, P, D) random unit embeddings (independent of the text encoder)."""
    g = torch.Generator().manual_seed(seed + n)
    return F.normalize(torch.randn(n, len(model.templates), model.clip.embed_dim, generator=g), dim=-1)


@torch.no_grad()
def structured_text(model, image: torch.Tensor, n: int, num_matching: int, seed: int = 0) -> torch.Tensor:
    """(N, P, D) embeddings where the first ``num_matching`` classes match the image: k-means
    centres (10 Lloyd iterations, seeded) of its normalised dense CLIP embeddings, each moved
    halfway towards the image's mean embedding (so that every pixel is closer to every matching
    class than to a random one, its own cluster's class the closest), with the sign of each
    template's copy (+c or -c) chosen so that the model's first class-rejection scorer scores the
    class higher (SED: the cost embedding and first auxiliary head, a linear function of the cost
    map, probed one template channel at a time; otherwise +c: ERR-Seg's CRM ranks the cost itself);
    the other classes random unit vectors. ``image``: (1, 3, H, W) normalised, at the working resolution."""
    emb = random_text(model, n, seed)
    s = min(num_matching, n)
    dense = model.clip.dense_embedding(model.clip.forward_features(image))  # (1, D, h, w)
    pixels = F.normalize(dense[0].flatten(1).T.float(), dim=-1).cpu()  # (hw, D)
    s = min(s, pixels.shape[0])
    g = torch.Generator().manual_seed(seed)
    centres = pixels[torch.randperm(pixels.shape[0], generator=g)[:s]].clone()
    for _ in range(10):
        assign = (pixels @ centres.T).argmax(dim=1)
        for j in range(s):
            members = pixels[assign == j]
            if len(members):
                centres[j] = members.mean(0)
    centres = F.normalize(F.normalize(centres, dim=-1) + F.normalize(pixels.mean(0), dim=0), dim=-1)
    signs = torch.ones(emb.shape[1])
    decoder = getattr(model, "decoder", None)
    if decoder is not None and hasattr(decoder, "aux_heads") and hasattr(decoder, "cost_embed"):
        # the first scorer (cost embedding, then auxiliary head) is linear in the cost map: probe its
        # response to a unit cost in each template channel alone, against an all-zero cost map
        p, (h, w) = emb.shape[1], dense.shape[-2:]
        probe = torch.zeros(1, p, p + 1, h, w, device=dense.device)
        probe[0, torch.arange(p), torch.arange(p)] = 1.0
        score = decoder.aux_heads[0](decoder.cost_embed(probe)).mean(dim=(1, 2, 3)).cpu()  # (P + 1,)
        signs = torch.where(score[:p] >= score[p], 1.0, -1.0)
    emb[:s] = centres[:, None] * signs[None, :, None]
    return emb


def use_fixed_embeddings(model, emb: torch.Tensor) -> None:
    """Make the model's ``class_embeddings()`` return ``emb`` (on its device)."""
    emb = emb.to(model.device)
    model.class_embeddings = lambda names=None, emb=emb: emb


def set_resolution(model, size: int) -> None:
    attr = resolution_attribute(model)
    if attr:
        setattr(model, attr, (size, size))


# ---- timing of one setting ----------------------------------------------------------------------
@contextmanager
def stage_hooks(model, stamps: dict, device: torch.device):
    """Timestamps at the decoder's start and end (synchronising on CUDA), and the number of
    classes that reached its last layer (``kept``)."""
    decoder = getattr(model, "decoder", None)
    if decoder is None:
        yield
        return

    def pre(module, args, kwargs=None):
        sync(device)
        stamps["decoder_start"] = time.perf_counter()

    def post(module, args, output):
        sync(device)
        stamps["decoder_end"] = time.perf_counter()
        if isinstance(output, dict) and "kept" in output:
            stamps["kept"] = int(output["kept"].shape[-1])

    handles = [decoder.register_forward_pre_hook(pre), decoder.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def make_batch(image: torch.Tensor, batch: int):
    return [{"image": image, "height": image.shape[-2], "width": image.shape[-1]} for _ in range(batch)]


def time_inference(model, batch_inputs, runs: int, warmup: int, device: torch.device) -> dict:
    """Latencies (s) of ``model(batch_inputs)`` and their encoder / decoder / postprocessing split."""
    stamps = {}
    total, cpu, enc, dec, first = [], [], [], [], []
    with torch.no_grad(), stage_hooks(model, stamps, device):
        for i in range(warmup + runs):
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            model(batch_inputs)
            sync(device)
            t1, c1 = time.perf_counter(), time.process_time()
            if i < warmup:
                first.append(t1 - t0)  # torch.compile compiles in the first forwards
            else:
                total.append(t1 - t0)
                cpu.append(c1 - c0)
                if "decoder_start" in stamps:
                    enc.append(stamps["decoder_start"] - t0)
                    dec.append(stamps["decoder_end"] - stamps["decoder_start"])
    return {"total": total, "cpu": cpu, "encoder": enc, "decoder": dec, "kept": stamps.get("kept"), "warmup": first}


class _Predict(nn.Module):
    """What fvcore traces: the model's forward on ready (normalised, resized) images -> logits."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, images):
        with self.model.fast_paths.autocast(images.device):
            out = self.model.predict(images) if hasattr(self.model, "predict") else self.model.segment(images)
        return out["logits"] if isinstance(out, dict) else out


def sdpa_flop_jit(inputs, outputs):
    """fvcore handle of ``scaled_dot_product_attention``: B*H*L*S*(D + Dv) multiply-adds."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(inputs[i]) for i in range(3))
    batch = 1
    for d in q[:-2]:
        batch *= d
    return batch * q[-2] * k[-2] * (q[-1] + v[-1])


def gflops(model, images: torch.Tensor) -> float:
    """fvcore GFLOPs (1 multiply-add = 1 flop) of the forward on ``images`` (the classes kept by
    rejection are those of this run; postprocessing not included)."""
    import logging
    import warnings

    from fvcore.nn import FlopCountAnalysis

    logging.getLogger("fvcore").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = FlopCountAnalysis(_Predict(model), (images,))
        analysis.set_op_handle("aten::scaled_dot_product_attention", sdpa_flop_jit)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False).tracer_warnings("none")
        return analysis.total() / 1e9


def model_input(model, image: torch.Tensor, batch: int) -> torch.Tensor:
    """(B, 3, h, w) normalised images as the model's forward hands them to ``predict``."""
    x = model.normalize(image)[None]
    attr = resolution_attribute(model)
    if attr:
        x = model.resize_to(x, getattr(model, attr))
    return x.expand(batch, -1, -1, -1).contiguous()


def summarise(kind: str, times: dict, batch: int, mem: PeakMemory, extra: dict) -> dict:
    total = times["total"]
    row = {"mode": kind, **latency_row(total, batch, mem)}
    if times.get("cpu"):
        row["cpu_s_median"] = statistics.median(times["cpu"])
    if times.get("encoder"):
        row["encoder_ms_median"] = 1000 * statistics.median(times["encoder"])
        row["decoder_ms_median"] = 1000 * statistics.median(times["decoder"])
        row["post_ms_median"] = 1000 * statistics.median(t - e - d for t, e, d in zip(total, times["encoder"],
                                                                                      times["decoder"]))
    if times.get("warmup"):
        row["warmup_ms"] = [1000 * t for t in times["warmup"]]
    row.update(extra)
    return row


# ---- training -----------------------------------------------------------------------------------
def time_training(cfg, model, image_size, num_classes: int, batch: int, runs: int, warmup: int,
                  device: torch.device, text: str, labels: str = "random") -> dict:
    """Images/s of full training steps (forward, backward, optimizer step; the project's train loop
    with SOLVER.AMP) on random images and labels over ``num_classes`` classes
    (``benchmark_timing.training_batch``)."""
    from detectron2.utils.events import EventStorage

    from ovss_d2.engine import build_optimizer
    from ovss_d2.engine.train_loop import OVSSTrainLoop

    model.train()
    model.train_class_names = [f"class number {i}" for i in range(num_classes)]
    text_trained = any(p.requires_grad for _, p in model.clip.text_named_tensors())
    if text != "encoder" and not text_trained:
        use_fixed_embeddings(model, random_text(model, num_classes))
    data = training_batch(batch, *image_size, num_classes, labels)

    def loader():
        while True:
            yield data

    optimizer = build_optimizer(cfg, model)
    loop = OVSSTrainLoop(model, loader(), optimizer, amp=cfg.SOLVER.AMP.ENABLED, amp_dtype=cfg.SOLVER.AMP.DTYPE,
                         seed=cfg.SEED)
    times, cpu = [], []
    with EventStorage(0), PeakMemory(device) as mem:
        for i in range(warmup + runs):
            loop.iter = i
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            loop.run_step()
            sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    extra = {"classes": num_classes, "topk": None, "resolution": list(image_size),
             "text_encoder_in_step": text_trained, "train_labels": labels}
    return summarise("train", {"total": times, "cpu": cpu}, batch, mem, extra)


# ---- tables -------------------------------------------------------------------------------------
def markdown(header: str, rows, knob: str) -> str:
    cols = [("mode", "mode", "{}"), ("variant", "variant", "{}"), ("resolution", "resolution", "{}"),
            ("classes", "classes", "{}"),
            ("topk", knob, "{}"), ("batch", "batch", "{}"), ("total_ms_median", "total ms (median)", "{:.1f}"),
            ("total_ms_p90", "p90", "{:.1f}"), ("cpu_s_median", "CPU s", "{:.1f}"),
            ("encoder_ms_median", "encoder ms", "{:.1f}"),
            ("decoder_ms_median", "decoder ms", "{:.1f}"), ("post_ms_median", "post ms", "{:.1f}"),
            ("kept", "classes decoded", "{}"), ("images_per_s", "images/s", "{:.3g}"),
            ("peak_mem_gib", "peak GiB", "{:.2f}"),
            ("forward_mem_gib", "forward GiB", "{:.2f}"), ("gflops", "GFLOPs", "{:.4g}"), ("text", "text", "{}")]
    cols = [c for c in cols if any(r.get(c[0]) is not None for r in rows)]
    out = [header, "", "| " + " | ".join(c[1] for c in cols) + " |", "|" + " ---: |" * len(cols)]
    for r in rows:
        cells = []
        for key, _, fmt in cols:
            v = r.get(key)
            if key == "topk":
                v = "-" if v is None else (v or "off")
            elif key == "resolution" and isinstance(v, (list, tuple)):
                v = "x".join(str(x) for x in v)
            cells.append("-" if v is None else fmt.format(v) if not isinstance(v, str) else v)
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def switches(cfg, train: bool = False) -> str:
    amp = cfg.SOLVER.AMP if train else cfg.TEST.AMP
    parts = [f"{'training ' if train else ''}AMP {amp.DTYPE}" if amp.ENABLED else "fp32"]
    if cfg.MODEL.CHANNELS_LAST:
        parts.append("channels-last")
    if cfg.MODEL.COMPILE.ENABLED:
        mode = f", {cfg.MODEL.COMPILE.MODE}" if cfg.MODEL.COMPILE.MODE else ""
        parts.append(f"torch.compile ({cfg.MODEL.COMPILE.BACKEND}{mode})")
    if cfg.TEST.CLASS_CHUNK_SIZE and not train:
        parts.append(f"class chunks of {cfg.TEST.CLASS_CHUNK_SIZE}")
    return ", ".join(parts)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--vocab-sizes", type=int, nargs="+", default=[20, 150, 459, 847])
    p.add_argument("--topk", type=int, nargs="+", default=None,
                   help="classes limit: SED's early-rejection k or ERR-Seg's CRM N (0 = off); default: the config's")
    p.add_argument("--resolutions", type=int, nargs="+", default=None,
                   help="working resolutions S (S x S) for models with one (SED, ERR-Seg); default: the config's")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1])
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--image-size", type=int, nargs=2, default=None, metavar=("H", "W"),
                   help="input image size (inference, default 512 x 683) or training crop (default: the "
                        "working resolution)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: torch's); 1 makes CPU time robust on a shared machine")
    text = p.add_mutually_exclusive_group()
    text.add_argument("--random-text", action="store_true",
                      help="random unit text embeddings instead of running the text encoder")
    text.add_argument("--structured-text", type=int, default=0, metavar="S",
                      help="S classes matching the image (see above), the rest random")
    p.add_argument("--flops", action="store_true", help="fvcore GFLOPs (one extra traced run per setting)")
    p.add_argument("--train", action="store_true", help="training throughput instead of inference")
    p.add_argument("--train-classes", type=int, default=171, help="training vocabulary size (COCO-Stuff: 171)")
    p.add_argument("--train-labels", choices=TRAIN_LABELS, default="random",
                   help="random: every pixel's class uniform (every class in every image); blocks: a 4 x 4 grid of "
                        "one class each, as tools/golden/time_authors.py gives the authors' code")
    p.add_argument("--output", default="", help="path prefix for .md and .json")
    p.add_argument("--append", action="store_true", help="add the rows to an existing --output JSON")
    p.add_argument("--title", default="", help="first line of the Markdown table (default: the config)")
    p.add_argument("--variant", choices=sorted(VARIANTS), default=None,
                   help="named inference settings (fp32; bf16 autocast + channels-last; the same + torch.compile), "
                        "applied before --opts")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ovss_d2.engine import OVSSTrainer, load_config

    cfg = load_config(args.config_file, ["MODEL.CLIP.PRETRAINED", "none", "DATASETS.TRAIN", "()",
                                         "DATASETS.TEST", "()", "MODEL.DEVICE", args.device,
                                         *VARIANTS.get(args.variant, []), *args.opts])
    device = torch.device(cfg.MODEL.DEVICE)
    load_start = load_average()
    torch.manual_seed(0)
    model = OVSSTrainer.build_model(cfg).eval()
    knob = rejection_attribute(model)
    res_attr = resolution_attribute(model)
    text_mode = "encoder" if not (args.random_text or args.structured_text) else (
        "random" if args.random_text else f"structured {args.structured_text}")
    rows = []
    if args.train:
        size = tuple(args.image_size or getattr(model, "clip_resolution", (512, 512)))
        for b in args.batch_sizes:
            row = time_training(cfg, model, size, args.train_classes, b, args.runs, args.warmup, device, text_mode,
                                args.train_labels)
            row["text"] = text_mode
            rows.append(row)
            print(f"train B={b}: {row['total_ms_median']:.1f} ms/step, {row['images_per_s']:.3g} images/s, "
                  f"peak {row['peak_mem_gib']:.2f} GiB", flush=True)
    else:
        args.image_size = args.image_size or [512, 683]
        g = torch.Generator().manual_seed(0)
        image = torch.randint(0, 256, (3, *args.image_size), dtype=torch.uint8, generator=g).to(device)
        resolutions = args.resolutions or [getattr(model, res_attr)[0] if res_attr else None]
        topks = args.topk if args.topk is not None else ([getattr(model, knob)] if knob else [None])
        for res in resolutions:
            if res is not None and res_attr:
                set_resolution(model, res)
            img = image if res_attr or res is None else torch.randint(0, 256, (3, res, res), dtype=torch.uint8,
                                                                      generator=g).to(device)
            shown_res = list(getattr(model, res_attr)) if res_attr else list(img.shape[-2:])
            for n in args.vocab_sizes:
                model.set_vocabulary([f"class number {i}" for i in range(n)])
                if "class_embeddings" in model.__dict__:
                    del model.class_embeddings  # back to the model's own method
                if args.random_text:
                    use_fixed_embeddings(model, random_text(model, n))
                elif args.structured_text:
                    use_fixed_embeddings(model, structured_text(model, model_input(model, img, 1), n,
                                                                args.structured_text))
                with torch.no_grad():
                    model.class_embeddings()  # the text encoder (if any) runs here, once, untimed
                for k in topks:
                    if knob:
                        setattr(model, knob, k)
                    for b in args.batch_sizes:
                        batch = make_batch(img, b)
                        with PeakMemory(device) as mem:
                            times = time_inference(model, batch, args.runs, args.warmup, device)
                        extra = {"resolution": shown_res, "classes": n, "topk": k, "kept": times["kept"],
                                 "text": text_mode}
                        if args.flops:
                            extra["gflops"] = gflops(model, model_input(model, img, b))
                        row = summarise("inference", times, b, mem, extra)
                        rows.append(row)
                        print(f"res={shown_res} N={n:5d} k={k} B={b}: total {row['total_ms_median']:9.1f} ms "
                              f"(p90 {row['total_ms_p90']:9.1f}) encoder {row.get('encoder_ms_median', 0):8.1f} "
                              f"decoder {row.get('decoder_ms_median', 0):9.1f} kept {times['kept']} "
                              f"{row['images_per_s']:.3g} img/s peak {row['peak_mem_gib']:.2f} GiB"
                              + (f" {extra['gflops']:.1f} GFLOPs" if args.flops else ""), flush=True)
    what = (f"training steps, {args.train_classes} classes" if args.train
            else "input " + "x".join(map(str, args.image_size)))
    header = (f"{args.title or 'config `' + os.path.relpath(os.path.abspath(args.config_file), REPO) + '`'}: "
              f"{machine_description(device)}, torch {torch.__version__}, {switches(cfg, args.train)}; "
              f"{what}, "
              f"median of {args.runs} runs after {args.warmup} warm-up; load average {load_start} at the start, "
              f"{load_average()} at the end; peak memory: "
              f"{rows[0]['memory_method'] if rows else ''}")
    meta = {"header": header, "config": os.path.relpath(os.path.abspath(args.config_file), REPO),
            "machine": machine_description(device), "torch": torch.__version__, "switches": switches(cfg, args.train),
            "environment": environment(device), "argv": list(argv or sys.argv[1:])}
    for r in rows:
        r["switches"] = meta["switches"]
        if args.variant:
            r["variant"] = args.variant
    if args.output and args.append and os.path.isfile(args.output + ".json"):
        with open(args.output + ".json") as f:
            old = json.load(f)
        rows = old["rows"] + rows
        meta["header"] = old["header"] + "\n\n" + header
        meta["argv"] = old.get("argv", []) + ["--"] + meta["argv"]
    md = markdown(meta["header"], rows, REJECTION_KNOBS.get(knob, "rejection"))
    print(md)
    if args.output:
        write_tables(args.output, md, {**meta, "rows": rows})
    return rows


if __name__ == "__main__":
    main()
