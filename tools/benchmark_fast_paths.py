#!/usr/bin/env python
"""Before / after: what each speed switch (ovss_d2/modeling/fast_paths.py) buys on one model,
measured in one process with the variants interleaved (run 1 of every variant, then run 2 of
every variant, ...), so that a machine shared with other jobs slows them all alike.

    python tools/benchmark_fast_paths.py --config-file configs/err_seg/err_seg_convnext_b_640.yaml \\
        --classes 150 --topk 32 --runs 5 --compile --output docs/benchmarks/err_seg_b_fast_paths_cpu

Variants: the plain fp32 path; channels-last; AMP (bf16, or --amp-dtype); AMP + channels-last;
AMP + channels-last + torch.compile (--compile; the compile time is reported apart); AMP +
channels-last + class chunks (--class-chunk C, the memory switch); and the plain path with the
class-rejection code as it was before the performance work (``hit[idx] = True`` and a CRM weight
tensor built from a Python list: host-to-device copies; SED's cost guidance up-sampled for every
class before rejection instead of for the kept classes only). For each: median latency (and
decoder share) and process CPU time (all threads; less sensitive to other jobs on a shared machine),
speed-ups over the plain path, the memory a forward adds at its peak (peak minus the usage
before it, from one untimed run per variant, which is also its warm-up), host-synchronising
operators per forward (ovss_d2.utils.profiling.HostSyncCounter), and the largest difference
(and the mean difference) of its class probabilities from the plain path's. Random weights;
random text embeddings or, with --structured-text, some classes matching the image.
"""
import argparse
import contextlib
import copy
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import benchmark as bench  # noqa: E402  (tools/benchmark.py; it also puts the repository on sys.path)
import torch  # noqa: E402

from ovss_d2.modeling import fast_paths as fp  # noqa: E402
from ovss_d2.modeling.cost_aggregation import class_selection  # noqa: E402
from ovss_d2.utils.profiling import HostSyncCounter  # noqa: E402


# ---- the class-rejection code before the performance work, for the "before" variant ----------
def topk_union_before(scores, k):
    n = scores.shape[1]
    if k >= n:
        return torch.arange(n, device=scores.device)
    top = scores.topk(k, dim=1).indices
    hit = torch.zeros(n, dtype=torch.bool, device=scores.device)
    hit[top.reshape(-1)] = True  # a host tensor of True copied to the device
    return hit.nonzero(as_tuple=False).squeeze(1)


def crm_scores_before(cost):
    b, _, n, _, _ = cost.shape
    ranks = min(len(class_selection.CRM_RANK_WEIGHTS), n)
    avg = cost[:, 0] if cost.shape[1] == 1 else cost.mean(dim=1)
    top = avg.topk(ranks, dim=1).indices
    weights = torch.tensor(class_selection.CRM_RANK_WEIGHTS[:ranks], device=cost.device)  # host -> device copy
    src = weights.view(1, ranks, 1, 1).expand(top.shape).reshape(b, -1)
    return torch.zeros(b, n, device=cost.device).scatter_add_(1, top.reshape(b, -1), src)


def sed_decoder_forward_before(self, cost, guidance, topk=None, class_chunk=0):
    """SEDDecoder.forward as it was: the cost guidance of all three layers computed for every
    class up front, then the kept rows picked at each rejection."""
    b, _, n, _, _ = cost.shape
    x = self.cost_embed(cost)
    guid = [proj(g) for proj, g in zip(self.guidance_proj, guidance)]
    c = cost.transpose(1, 2).flatten(0, 1)
    cost_guid = []
    for proj in self.cost_guidance_proj:
        c = proj(c)
        cost_guid.append(c)
    kept = torch.arange(n, device=cost.device)
    for i, layer in enumerate(self.layers):
        if topk:
            scores = self.aux_heads[i](x).view(b, -1, *x.shape[-2:])
            keep = topk_union_before(scores, topk)
            if keep.numel() < kept.numel():
                cur = kept.numel()
                x = class_selection.select_class_rows(x, cur, keep)
                cost_guid = cost_guid[:i] + [class_selection.select_class_rows(cg, cur, keep) for cg in cost_guid[i:]]
                kept = kept[keep]
        x = layer(x, kept.numel(), guid[i], cost_guid[i])
    logits = self.head(x).view(b, kept.numel(), *x.shape[-2:])
    if kept.numel() < n:
        logits = class_selection.fill_rejected(logits, kept, n)
    return {"logits": logits, "aux": [], "kept": kept}


@contextmanager
def code_before_this_work():
    """The class-rejection code before the performance work: host tensors in SED's top-k union and
    ERR-Seg's CRM weights, SED's cost guidance for every class."""
    from ovss_d2.modeling.heads import SEDDecoder

    saved = (SEDDecoder.forward, class_selection.crm_scores)
    SEDDecoder.forward, class_selection.crm_scores = sed_decoder_forward_before, crm_scores_before
    try:
        yield
    finally:
        SEDDecoder.forward, class_selection.crm_scores = saved


BEFORE = "fp32, rejection code before this work"


class Variant:
    def __init__(self, name, model, amp=False, chunk=0, before_cleanup=False, compiled=False):
        self.name, self.model, self.amp, self.chunk = name, model, amp, chunk
        self.before_cleanup, self.compiled = before_cleanup, compiled
        self.times, self.cpu, self.enc, self.dec = [], [], [], []

    @contextmanager
    def active(self):
        self.model.fast_paths.amp = self.amp
        self.model.fast_paths.class_chunk = self.chunk
        if self.before_cleanup:
            with code_before_this_work():
                yield
        else:
            yield


def run_once(variant, batch, device):
    stamps = {}
    with torch.no_grad(), variant.active(), bench.stage_hooks(variant.model, stamps, device):
        bench.sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = variant.model(batch)
        bench.sync(device)
        t1, c1 = time.perf_counter(), time.process_time()
    stamps["cpu"] = c1 - c0
    return t1 - t0, stamps, out[0]["sem_seg"].float()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True)
    p.add_argument("--classes", type=int, default=150)
    p.add_argument("--topk", type=int, default=None, help="SED's k / ERR-Seg's CRM N (default: the config's)")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--image-size", type=int, nargs=2, default=[512, 683], metavar=("H", "W"))
    p.add_argument("--amp-dtype", default="bfloat16", choices=sorted(fp.AMP_DTYPES))
    p.add_argument("--compile", action="store_true", help="add the torch.compile variant")
    p.add_argument("--compile-backend", default="inductor")
    p.add_argument("--class-chunk", type=int, default=0, help="add the class-chunk variant with this chunk")
    p.add_argument("--structured-text", type=int, default=0, metavar="S",
                   help="S of the classes match the image (tools/benchmark.py --structured-text), so that the "
                        "kept classes do not hinge on near-ties of noise; default: all random")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: torch's); 1 makes CPU time robust on a shared machine")
    p.add_argument("--output", default="")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ovss_d2.engine import OVSSTrainer, load_config

    cfg = load_config(args.config_file, ["MODEL.CLIP.PRETRAINED", "none", "DATASETS.TRAIN", "()", "DATASETS.TEST",
                                         "()", "MODEL.DEVICE", args.device, "TEST.AMP.DTYPE", args.amp_dtype,
                                         *args.opts])
    device = torch.device(cfg.MODEL.DEVICE)
    load_start = bench.load_average()
    torch.manual_seed(0)
    plain = OVSSTrainer.build_model(cfg).eval()
    knob = bench.rejection_attribute(plain)
    if knob and args.topk is not None:
        setattr(plain, knob, args.topk)
    plain.set_vocabulary([f"class number {i}" for i in range(args.classes)])
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, *args.image_size), dtype=torch.uint8, generator=g).to(device)
    batch = bench.make_batch(image, 1)
    emb = (bench.structured_text(plain, bench.model_input(plain, image, 1), args.classes, args.structured_text)
           if args.structured_text else bench.random_text(plain, args.classes))
    bench.use_fixed_embeddings(plain, emb)
    cl = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    cl.fast_paths = copy.copy(plain.fast_paths)
    cl.fast_paths.channels_last = True
    amp = args.amp_dtype.replace("bfloat16", "bf16").replace("float16", "fp16")
    variants = [Variant(BEFORE, plain, before_cleanup=True),
                Variant("fp32 (plain)", plain), Variant("channels-last", cl),
                Variant(f"{amp} autocast", plain, amp=True), Variant(f"{amp} + channels-last", cl, amp=True)]
    compile_s = None
    if args.compile:
        comp = copy.deepcopy(cl)
        comp.fast_paths = copy.copy(cl.fast_paths)
        targets = [*fp.encoder_compile_targets(comp.clip), *comp.decoder.compile_targets()]
        if fp.compile_modules(targets, args.compile_backend, "", device.type):
            variants.append(Variant(f"{amp} + channels-last + compile ({args.compile_backend})", comp, amp=True,
                                    compiled=True))
    if args.class_chunk:
        variants.append(Variant(f"{amp} + channels-last + class chunks of {args.class_chunk}", cl, amp=True,
                                chunk=args.class_chunk))
    for v in variants:  # untimed: warm-up (compilation), peak memory, outputs, synchronisations
        # the counter's dispatch hook costs microseconds per operator; it would break the graph
        # capture of the compiled variant, which runs the same operators as its eager twin
        counter = HostSyncCounter() if not v.compiled else contextlib.nullcontext()
        with bench.PeakMemory(device) as mem, counter:
            t, stamps, out = run_once(v, batch, device)
        v.peak, v.first_s, v.kept = (mem.peak - mem.before) / 2**30, t, stamps.get("kept")
        if v.compiled:
            compile_s = t
        v.out = out
        v.syncs = None if v.compiled else counter.total
        print(f"{v.name}: first run {t:.1f} s, forward {v.peak:.2f} GiB, syncs {v.syncs}, kept {v.kept}", flush=True)
    reference = next(v.out for v in variants if v.name == "fp32 (plain)")
    for r in range(args.runs):
        for v in variants:
            t, stamps, _ = run_once(v, batch, device)
            v.times.append(t)
            v.cpu.append(stamps["cpu"])
            if "decoder_start" in stamps:
                v.dec.append(stamps["decoder_end"] - stamps["decoder_start"])
        print(f"run {r + 1}/{args.runs}: " + ", ".join(f"{v.times[-1]:.2f}" for v in variants), flush=True)
    base = statistics.median(next(v for v in variants if v.name == "fp32 (plain)").times)
    base_cpu = statistics.median(next(v for v in variants if v.name == "fp32 (plain)").cpu)
    rows = []
    for v in variants:
        med = statistics.median(v.times)
        diff = (v.out - reference).abs()
        rows.append({
            "variant": v.name, "total_ms_median": 1000 * med, "total_ms_p90": 1000 * bench.percentile(v.times, 0.9),
            "decoder_ms_median": 1000 * statistics.median(v.dec) if v.dec else None,
            "cpu_s_median": statistics.median(v.cpu), "speedup": base / med,
            "cpu_speedup": base_cpu / statistics.median(v.cpu), "forward_mem_gib": v.peak, "host_syncs": v.syncs,
            "kept": v.kept,
            "max_abs_prob_diff": diff.max().item(), "mean_abs_prob_diff": diff.mean().item(),
            "times_ms": [1000 * t for t in v.times]})
    knob_text = f", {bench.REJECTION_KNOBS[knob]} {getattr(plain, knob) or 'off'}" if knob else ""
    text = f"text: {args.structured_text} classes matching the image" if args.structured_text else "random text"
    header = (f"config `{os.path.relpath(os.path.abspath(args.config_file), bench.REPO)}`, {args.classes} classes"
              f"{knob_text}, input {args.image_size[0]}x{args.image_size[1]}, random weights, {text}; "
              f"{bench.machine_description(device)}, torch {torch.__version__}; variants interleaved, median of "
              f"{args.runs} runs; load average {load_start} at the start, {bench.load_average()} at the end"
              + (f"; compile time (first run) {compile_s:.0f} s" if compile_s else ""))
    md = [header, "", "| variant | total ms (median) | p90 | decoder ms | speed-up | CPU s | CPU-time speed-up "
                      "| forward GiB | host syncs / forward | classes decoded | max abs prob. diff | mean abs diff |",
          "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        dec = "-" if r["decoder_ms_median"] is None else f"{r['decoder_ms_median']:.0f}"
        syncs = "-" if r["host_syncs"] is None else str(r["host_syncs"])
        md.append(f"| {r['variant']} | {r['total_ms_median']:.0f} | {r['total_ms_p90']:.0f} | {dec} | "
                  f"{r['speedup']:.2f}x | {r['cpu_s_median']:.1f} | {r['cpu_speedup']:.2f}x | "
                  f"{r['forward_mem_gib']:.2f} | {syncs} | {r['kept']} | "
                  f"{r['max_abs_prob_diff']:.2g} | {r['mean_abs_prob_diff']:.2g} |")
    print("\n".join(md))
    if args.output:
        os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
        with open(args.output + ".md", "w") as f:
            f.write("\n".join(md) + "\n")
        with open(args.output + ".json", "w") as f:
            json.dump({"header": header, "argv": list(argv or sys.argv[1:]), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
