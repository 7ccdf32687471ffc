#!/usr/bin/env python
"""Scale benchmark of the training data path (issue 27): generates synthetic sources at the papers'
scale and measures what a run pays for them before and while it trains.

    python tools/benchmark_data.py [--root /tmp/ovss_d2_data_benchmark] [--keep] \\
        [--records 12000000] [--shards 200 --per-shard 5000] [--teacher-images 200000] \\
        [--workers 4 --batch 32 --iters 2000] [--json docs/benchmarks/data_scale_cpu.json] \\
        [--md docs/benchmarks/data_scale_cpu.md] [--only captions shards teacher]

Sources (under ``--root``, removed at the end unless ``--keep``; the record indexes go to
``<root>/cache``, which stands for ``$OVSS_D2_CACHE``):

* captions: a JSONL of ``--records`` rows (``{"image": "images/<dir>/<n>.jpg", "caption": ...}``,
  CC12M's size by default);
* shards: ``--shards`` webdataset tars of ``--per-shard`` tiny JPEGs with ``.txt`` / ``.json``
  (img2dataset's layout);
* teacher: a ZeroSeg teacher-feature cache of ``--teacher-images`` images x ``--views`` x ``--dim``
  float16 (random features; ImageNet-1k at the paper's 30 views of 768 is 1.28 M images).

Measured, each step in a fresh process: index build time (first, and the cached re-open),
registration time and peak memory from the cached index, the proportional set size (PSS: shared
pages counted once, read from ``/proc/<pid>/smaps_rollup``) of one rank and its ``--workers``
loader workers at iterations 1, ``--mid-iter`` and ``--iters``, loader samples/s, and the
teacher-cache read time of a ``--teacher-batch``-image batch from a warm page cache. The caption
loader's mapper copies the record's fields (the JSONL's images do not exist: this measures the
record path, not JPEG decoding); the shard loader decodes the JPEGs.
"""
import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tarfile
import time
from io import BytesIO
from typing import Dict, List, Sequence

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TARGETS = {  # issue 27's targets on a 2-core, 24 GiB machine
    "registration_s": 60.0, "pss_total_gb": 3.0, "pss_drift": 0.05, "index_first_s": 120.0, "index_cached_s": 5.0,
    "teacher_batch_ms": 50.0,
}
WORDS = ("a photo of", "the", "red", "green", "small", "big", "dog", "cat", "house", "on the grass", "near the sea",
         "under a blue sky", "with friends", "at night", "in the city", "two", "old", "new", "car", "tree")


# ---- memory --------------------------------------------------------------------------------------
def proc_memory(pid: int) -> Dict[str, float]:
    """{"rss_mb", "pss_mb", "pss_anon_mb", "pss_file_mb"} of a process, from /proc/<pid>/smaps_rollup
    (Linux). Anonymous PSS is where copy-on-write copies land; file PSS holds memory-mapped files
    (e.g. a record table), pages the kernel can drop and read again."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss", "Pss_Anon", "Pss_File"):
                out[key.lower() + "_mb"] = int(value.split()[0]) / 1024
    return out


def loader_memory(loader, marks: Sequence[int]):
    """Iterate ``loader`` to ``max(marks)`` batches; at each mark the memory of this process and
    of each worker. Returns ([{"iter", "main", "workers": [...]}], samples per second)."""
    it = iter(loader)
    snapshots, samples, spent, last = [], 0, 0.0, max(marks)
    for i in range(1, last + 1):
        t = time.perf_counter()
        n = len(next(it))
        if i > 1:  # the first batch waits for the workers to start
            samples, spent = samples + n, spent + time.perf_counter() - t
        if i in marks:
            workers = [proc_memory(w.pid) for w in getattr(it, "_workers", [])]
            snapshots.append({"iter": i, "main": proc_memory(os.getpid()), "workers": workers})
    del it
    return snapshots, samples / max(spent, 1e-9)


def _total_pss_gb(snapshot: Dict) -> float:
    return (snapshot["main"]["pss_mb"] + sum(w["pss_mb"] for w in snapshot["workers"])) / 1024


# ---- generating sources --------------------------------------------------------------------------
def write_caption_jsonl(path: str, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    captions = [" ".join(rng.sample(WORDS, 6)) for _ in range(4096)]
    with open(path, "w", encoding="utf-8", buffering=1 << 22) as f:
        for start in range(0, n, 100_000):
            f.write("".join(
                f'{{"image": "images/{i // 10_000:05d}/{i:09d}.jpg", "caption": "{captions[i * 7919 % 4096]} {i}"}}\n'
                for i in range(start, min(n, start + 100_000))))


def _tiny_jpegs(count: int = 64) -> List[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        buf = BytesIO()
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(buf, "JPEG", quality=70)
        out.append(buf.getvalue())
    return out


def write_shards(folder: str, shards: int, per_shard: int) -> None:
    os.makedirs(folder, exist_ok=True)
    jpegs = _tiny_jpegs()

    def add(tar, name, payload):
        info = tarfile.TarInfo(name)
        info.size = len(payload)
        tar.addfile(info, BytesIO(payload))

    for s in range(shards):
        with tarfile.open(os.path.join(folder, f"{s:05d}.tar"), "w", format=tarfile.USTAR_FORMAT) as tar:
            for j in range(per_shard):
                key = f"{s:05d}{j:04d}"
                caption = f"{WORDS[j % len(WORDS)]} {WORDS[(j * 7) % len(WORDS)]} {key}"
                add(tar, f"{key}.jpg", jpegs[(s * per_shard + j) % len(jpegs)])
                add(tar, f"{key}.txt", caption.encode())
                add(tar, f"{key}.json", json.dumps({"key": key, "caption": caption, "status": "success"}).encode())


def write_teacher_cache(root: str, images: int, views: int, dim: int, shard_size: int = 1024) -> None:
    import numpy as np

    from ovss_d2.data.teacher_cache import cache_description, finalize
    from ovss_d2.data.teacher_cache import write_shards as write_teacher_shards

    rng = np.random.default_rng(0)
    block = rng.standard_normal((shard_size, views, dim)).astype(np.float16)
    records = [{"file_name": f"/data/imagenet/train/n{i % 1000:08d}/n{i % 1000:08d}_{i}.JPEG"} for i in range(images)]
    write_teacher_shards(root, records, lambda part: block[:len(part)], shard_size, progress=False)
    assert finalize(root, cache_description("benchmark", [1, 2, 3, 4], 224, [r["file_name"] for r in records],
                                            shard_size))


# ---- steps (each runs in a fresh process) --------------------------------------------------------
def _cfg(workers: int, batch: int):
    from detectron2.config import CfgNode

    return CfgNode({"SOLVER": {"IMS_PER_BATCH": batch}, "SEED": 0, "DATALOADER": {"NUM_WORKERS": workers},
                    "DATASETS": {"TRAIN": ("benchmark_train",)}})


def copy_caption_fields(record: Dict) -> Dict:
    return {"file_name": record["file_name"], "caption": record["caption"], "image_id": record["image_id"]}


def decode_shard_image(record: Dict) -> Dict:
    from ovss_d2.data.image_caption import read_caption_image

    return {"shape": read_caption_image(record).shape, "caption": record["caption"]}


def step_register(source: str) -> Dict:
    """Registration from scratch or from the cached index: time, peak and added memory."""
    import ovss_d2  # noqa: F401
    from detectron2.data import DatasetCatalog

    from ovss_d2.data.image_caption import register_image_caption_dataset

    before = proc_memory(os.getpid())
    t = time.perf_counter()
    register_image_caption_dataset("benchmark_train", source)
    records = DatasetCatalog.get("benchmark_train")
    seconds = time.perf_counter() - t
    after = proc_memory(os.getpid())
    return {"records": len(records), "seconds": seconds, "rss_added_mb": after["rss_mb"] - before["rss_mb"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "rss_mb": after["rss_mb"]}


def step_loader(source: str, workers: int, batch: int, marks: Sequence[int], decode: bool) -> Dict:
    import ovss_d2  # noqa: F401
    from detectron2.data import DatasetCatalog

    from ovss_d2.data.build import build_train_loader
    from ovss_d2.data.image_caption import register_image_caption_dataset

    register_image_caption_dataset("benchmark_train", source)
    DatasetCatalog.get("benchmark_train")  # the index is there: registration as a run does it
    loader = build_train_loader(_cfg(workers, batch), decode_shard_image if decode else copy_caption_fields)
    snapshots, rate = loader_memory(loader, marks)
    return {"snapshots": snapshots, "samples_per_s": rate, "pss_total_gb": [_total_pss_gb(s) for s in snapshots]}


def step_teacher(root: str, batch: int, repeats: int) -> Dict:
    import numpy as np

    from ovss_d2.data.teacher_cache import TeacherFeatureCache

    for f in sorted(os.listdir(root)):  # warm the page cache: read every shard once
        if f.endswith(".npy"):
            with open(os.path.join(root, f), "rb") as fh:
                while fh.read(1 << 24):
                    pass
    t = time.perf_counter()
    cache = TeacherFeatureCache(root)
    open_s = time.perf_counter() - t
    rng = np.random.default_rng(0)
    names = cache.files
    times = []
    for _ in range(repeats):
        pick = [names[int(i)] for i in rng.choice(len(names), batch, replace=False)]
        t = time.perf_counter()
        feats = cache.batch(pick)
        times.append(time.perf_counter() - t)
    return {"open_s": open_s, "batch_ms_median": 1000 * float(np.median(times)),
            "batch_ms_p95": 1000 * float(np.percentile(times, 95)), "batch_shape": list(feats.shape),
            "images": len(cache)}


def _run_step(args: argparse.Namespace, step: str, *extra: str) -> Dict:
    env = dict(os.environ, OVSS_D2_CACHE=os.path.join(args.root, "cache"), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, os.path.abspath(__file__), "--step", step, "--root", args.root, "--workers",
           str(args.workers), "--batch", str(args.batch), "--iters", str(args.iters), "--mid-iter", str(args.mid_iter),
           "--teacher-batch", str(args.teacher_batch), *extra]
    t = time.perf_counter()
    proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode:
        raise SystemExit(f"step {step} failed:\n{proc.stderr[-4000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - t
    print(f"[{time.strftime('%H:%M:%S')}] {step} {' '.join(extra)}: "
          f"{json.dumps({k: v for k, v in result.items() if k != 'snapshots'})}", flush=True)
    return result


def run_step_here(args: argparse.Namespace) -> None:
    marks = sorted({1, args.mid_iter, args.iters})
    captions, shards = os.path.join(args.root, "captions.jsonl"), os.path.join(args.root, "shards")
    if args.step == "register_captions":
        out = step_register(captions)
    elif args.step == "register_shards":
        out = step_register(shards)
    elif args.step == "loader_captions":
        out = step_loader(captions, args.workers, args.batch, marks, decode=False)
    elif args.step == "loader_shards":
        out = step_loader(shards, args.workers, args.batch, sorted({1, args.shard_iters}), decode=True)
    elif args.step == "teacher":
        out = step_teacher(os.path.join(args.root, "teacher"), args.teacher_batch, 200)
    else:
        raise SystemExit(f"unknown step {args.step}")
    print(json.dumps(out))


# ---- report --------------------------------------------------------------------------------------
def _mark(ok: bool) -> str:
    return "yes" if ok else "**no**"


def _pss(memory: Dict) -> str:
    return f"{memory['pss_mb']:.0f} ({memory['pss_anon_mb']:.0f})" if "pss_anon_mb" in memory else \
        f"{memory['pss_mb']:.0f}"


def markdown(results: Dict) -> str:
    a, lines = results["args"], []
    lines.append(f"Machine: {results['machine']}; load average before / after: {results['load_before']} / "
                 f"{results['load_after']} (the machine was shared with other jobs: timings are upper bounds).")
    lines.append(f"Sizes: {a['records']:,} JSONL records; {a['shards']} shards x {a['per_shard']:,} JPEGs; teacher "
                 f"cache {a['teacher_images']:,} images x {a['views']} views x {a['dim']} float16; loader "
                 f"{a['workers']} workers, batch {a['batch']}.")
    lines += ["", "| measurement | value | target | met |", "| --- | --- | --- | --- |"]
    c = results.get("captions")
    if c:
        first, cached, loader = c["register_first"], c["register_cached"], c["loader"]
        pss = loader["pss_total_gb"]
        drift = abs(pss[-1] - pss[-2]) / pss[-2]
        lines += [
            f"| JSONL generation ({a['records']:,} rows) | {c['generate_s']:.0f} s | | |",
            f"| caption records: first registration (reads the JSONL, writes the table) | {first['seconds']:.1f} s, "
            f"peak RSS {first['peak_rss_mb']:,.0f} MB | | |",
            f"| caption records: registration from the cached table | {cached['seconds']:.2f} s, peak RSS "
            f"{cached['peak_rss_mb']:,.0f} MB (+{cached['rss_added_mb']:,.0f} MB) | < 60 s | "
            f"{_mark(cached['seconds'] < TARGETS['registration_s'])} |",
            f"| rank + {a['workers']} workers, PSS sum at iterations " + ", ".join(
                str(s["iter"]) for s in loader["snapshots"]) + " | " + " / ".join(f"{g:.2f}" for g in pss)
            + f" GB | < 3 GB | {_mark(pss[-1] < TARGETS['pss_total_gb'])} |",
            f"| PSS change from iteration {loader['snapshots'][-2]['iter']} to {loader['snapshots'][-1]['iter']} | "
            f"{100 * drift:.1f} % | within 5 % | {_mark(drift <= TARGETS['pss_drift'])} |",
            "| per worker PSS (of it anonymous, i.e. copied or allocated) at the same iterations | " + "; ".join(
                " / ".join(_pss(s["workers"][w]) for s in loader["snapshots"])
                for w in range(len(loader["snapshots"][-1]["workers"]))) + " MB | | |",
            "| rank PSS (anonymous) at the same iterations | " + " / ".join(
                _pss(s["main"]) for s in loader["snapshots"]) + " MB | | |",
            f"| caption loader (record path only) | {loader['samples_per_s']:,.0f} samples/s | | |",
        ]
    s = results.get("shards")
    if s:
        n = a["shards"] * a["per_shard"]
        lines += [
            f"| shard generation ({n:,} samples) | {s['generate_s']:.0f} s | | |",
            f"| webdataset index, first build ({a['shards']} shards, {s['register_first']['records']:,} records) | "
            f"{s['register_first']['seconds']:.1f} s | < 120 s | "
            f"{_mark(s['register_first']['seconds'] < TARGETS['index_first_s'])} |",
            f"| webdataset index, cached re-open | {s['register_cached']['seconds']:.2f} s | < 5 s | "
            f"{_mark(s['register_cached']['seconds'] < TARGETS['index_cached_s'])} |",
            f"| shard loader, JPEG decoding | {s['loader']['samples_per_s']:,.0f} samples/s | | |",
        ]
    t = results.get("teacher")
    if t:
        lines += [
            f"| teacher cache generation | {t['generate_s']:.0f} s | | |",
            f"| teacher cache open (checks every shard's header and size) | {t['read']['open_s'] * 1000:.0f} ms | | |",
            f"| teacher cache, {a['teacher_batch']}-image batch {tuple(t['read']['batch_shape'])}, warm page cache | "
            f"median {t['read']['batch_ms_median']:.1f} ms, p95 {t['read']['batch_ms_p95']:.1f} ms | < 50 ms | "
            f"{_mark(t['read']['batch_ms_p95'] < TARGETS['teacher_batch_ms'])} |",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="/tmp/ovss_d2_data_benchmark", help="where the sources are generated")
    parser.add_argument("--keep", action="store_true", help="keep the generated sources")
    parser.add_argument("--records", type=int, default=12_000_000, help="JSONL caption rows (CC12M: ~12 M)")
    parser.add_argument("--shards", type=int, default=200)
    parser.add_argument("--per-shard", type=int, default=5000)
    parser.add_argument("--teacher-images", type=int, default=200_000)
    parser.add_argument("--views", type=int, default=30, help="teacher views per image (ZeroSeg: 1+4+9+16)")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--teacher-batch", type=int, default=64)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=32, help="images per iteration of the rank")
    parser.add_argument("--iters", type=int, default=2000)
    parser.add_argument("--mid-iter", type=int, default=500)
    parser.add_argument("--shard-iters", type=int, default=200, help="iterations of the JPEG-decoding loader")
    parser.add_argument("--only", nargs="+", choices=("captions", "shards", "teacher"),
                        default=["captions", "shards", "teacher"])
    parser.add_argument("--json", default="", help="write the results here")
    parser.add_argument("--md", default="", help="write the table here")
    parser.add_argument("--step", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        return run_step_here(args)

    os.makedirs(args.root, exist_ok=True)
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    results = {"args": vars(args), "load_before": " ".join(open("/proc/loadavg").read().split()[:3]),
               "machine": f"{os.cpu_count()} cores, {memory_gib:.0f} GiB"}
    try:
        if "captions" in args.only:
            c = results["captions"] = {}
            t = time.perf_counter()
            write_caption_jsonl(os.path.join(args.root, "captions.jsonl"), args.records)
            c["generate_s"] = time.perf_counter() - t
            c["register_first"] = _run_step(args, "register_captions")
            c["register_cached"] = _run_step(args, "register_captions")
            c["loader"] = _run_step(args, "loader_captions")
        if "shards" in args.only:
            s = results["shards"] = {}
            t = time.perf_counter()
            write_shards(os.path.join(args.root, "shards"), args.shards, args.per_shard)
            s["generate_s"] = time.perf_counter() - t
            s["register_first"] = _run_step(args, "register_shards")
            s["register_cached"] = _run_step(args, "register_shards")
            s["loader"] = _run_step(args, "loader_shards", "--shard-iters", str(args.shard_iters))
        if "teacher" in args.only:
            tc = results["teacher"] = {}
            t = time.perf_counter()
            write_teacher_cache(os.path.join(args.root, "teacher"), args.teacher_images, args.views, args.dim)
            tc["generate_s"] = time.perf_counter() - t
            tc["read"] = _run_step(args, "teacher")
    finally:
        results["load_after"] = " ".join(open("/proc/loadavg").read().split()[:3])
        if not args.keep:
            shutil.rmtree(args.root, ignore_errors=True)
    table = markdown(results)
    print(table)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.md:
        os.makedirs(os.path.dirname(os.path.abspath(args.md)), exist_ok=True)
        with open(args.md, "w") as f:
            f.write("# Data path at paper scale (tools/benchmark_data.py)\n\n" + table)


if __name__ == "__main__":
    main()
