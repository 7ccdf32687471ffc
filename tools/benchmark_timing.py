"""Timing and memory primitives shared by ``tools/benchmark.py`` (ovss-d2's models) and
``tools/golden/time_authors.py`` (the authors' code, in a process that must not import ovss-d2):
plain torch and the standard library only.
"""
import os
import platform
import re
import resource
import shutil
import subprocess

import torch


def sync(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def percentile(xs, q: float) -> float:
    """The nearest-rank ``q`` quantile (0 <= q <= 1) of ``xs``."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(device: torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        driver = gpu_driver()
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}" + (
            f", driver {driver}" if driver else "")
    return f"CPU {cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def gpu_driver() -> str:
    """The NVIDIA driver version (``nvidia-smi``), or "" where there is none."""
    if not shutil.which("nvidia-smi"):
        return ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.strip().splitlines()[0] if out.strip() else ""


def environment(device) -> dict:
    """What a table must name: the machine, torch, CUDA, cuDNN and the GPU driver."""
    device = torch.device(device)
    env = {"machine": machine_description(device), "torch": torch.__version__, "cuda": torch.version.cuda or "",
           "cudnn": str(torch.backends.cudnn.version() or "") if torch.backends.cudnn.is_available() else "",
           "driver": gpu_driver(), "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def load_average() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    return int(m.group(1)) if m else -1


class PeakMemory:
    """Peak memory of a code region, in bytes. CUDA: ``torch.cuda.max_memory_allocated`` (tensors
    only). CPU: the process's peak resident set size ``VmHWM``, reset at the start through
    ``/proc/self/clear_refs`` (Linux >= 4.0); where that is impossible, ``ru_maxrss``, the peak of
    the whole process lifetime (``method`` says which). ``before``: the usage at the start."""

    def __init__(self, device: torch.device):
        self.device = torch.device(device)
        self.method = "cuda_max_memory_allocated" if self.device.type == "cuda" else "vmhwm_reset"
        if self.device.type == "cpu":
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self.method = "ru_maxrss_lifetime"

    def __enter__(self):
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device)
        else:
            if self.method == "vmhwm_reset":
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
                self.before = _status_kib("VmRSS") * 1024
            else:
                self.before = 0
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            sync(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
        elif self.method == "vmhwm_reset":  # the kernel updates VmHWM lazily: never below the RSS seen
            self.peak = max(_status_kib("VmHWM"), _status_kib("VmRSS")) * 1024
            self.peak = max(self.peak, self.before)
        else:
            self.peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        return False


def latency_row(times, batch: int, mem: PeakMemory) -> dict:
    """The columns every table shares: median and p90 latency (ms), images/s, peak and added memory."""
    import statistics

    med = statistics.median(times)
    return {"batch": batch, "runs": len(times), "total_ms_median": 1000 * med,
            "total_ms_p90": 1000 * percentile(times, 0.9), "images_per_s": batch / med,
            "peak_mem_gib": mem.peak / 2**30, "mem_before_gib": mem.before / 2**30,
            "forward_mem_gib": (mem.peak - mem.before) / 2**30, "memory_method": mem.method,
            "times_ms": [1000 * t for t in times]}


def write_tables(prefix: str, markdown: str, data: dict) -> None:
    """``prefix``.md and ``prefix``.json (folders created)."""
    import json

    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    with open(prefix + ".md", "w") as f:
        f.write(markdown + "\n")
    with open(prefix + ".json", "w") as f:
        json.dump(data, f, indent=1)


TRAIN_LABELS = ("random", "blocks")


def training_batch(batch: int, height: int, width: int, num_classes: int, labels: str = "random"):
    """``batch`` training items, {"image": (3, H, W) uint8, "sem_seg": (H, W) int64}, from a generator
    seeded 0 (the same bytes for ours and the authors' code). ``labels`` "random": each pixel's class
    uniform over ``num_classes`` (every class in every image); "blocks": a 4 x 4 grid of blocks of
    one random class each (at most 16 classes per image, as in a real scene: ERR-Seg's training
    class selection then adds candidates outside the ground truth, which the authors' code needs)."""
    if labels not in TRAIN_LABELS:
        raise ValueError(f"labels {labels!r}: use one of {TRAIN_LABELS}")
    g = torch.Generator().manual_seed(0)
    items = []
    for _ in range(batch):
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=g)
        if labels == "random":
            sem_seg = torch.randint(0, num_classes, (height, width), generator=g)
        else:
            grid = torch.randint(0, num_classes, (4, 4), generator=g)
            sem_seg = grid[(torch.arange(height) * 4 // height)[:, None], (torch.arange(width) * 4 // width)[None]]
        items.append({"image": image, "sem_seg": sem_seg})
    return items
