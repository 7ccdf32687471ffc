"""Speed switches shared by every meta-architecture (docs/performance.md).

* ``TEST.AMP``: autocast the inference forward (bfloat16 on CPU or CUDA, float16 on CUDA).
  Training has its own switch, ``SOLVER.AMP``, applied by the train loop.
* ``MODEL.CHANNELS_LAST``: convolution weights and image batches in channels-last (NHWC)
  memory order, which oneDNN (CPU) and cuDNN (tensor cores) run faster; training and inference.
* ``MODEL.COMPILE``: ``torch.compile`` of the image encoder's stages and of the decoder's layers
  (``nn.Module.compile``: parameter names and checkpoints are unchanged). Where compilation is
  impossible (no ``torch.compile``, no C++ compiler for inductor on the CPU, no Triton on CUDA)
  it is skipped with a warning; a backend failure at run time falls back to eager.
* ``TEST.CLASS_CHUNK_SIZE``: the decoder's per-class layers process the vocabulary this many
  classes at a time at inference, which bounds peak memory at large vocabularies (same outputs).

None of them changes a parameter or a config default: with all of them off the model runs exactly
the plain fp32 path.
"""
import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Iterable, List

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class FastPaths:
    """The speed switches of one model (see the module docstring)."""

    amp: bool = False
    amp_dtype: str = "bfloat16"
    channels_last: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    compile_mode: str = ""
    class_chunk: int = 0
    device_type: str = "cpu"  # where the model runs (MODEL.DEVICE): what compilation must support

    def __post_init__(self):
        if self.amp_dtype not in AMP_DTYPES:
            raise ValueError(f"TEST.AMP.DTYPE={self.amp_dtype!r}: use one of {sorted(AMP_DTYPES)}.")
        if self.class_chunk < 0:
            raise ValueError(f"TEST.CLASS_CHUNK_SIZE={self.class_chunk}: use 0 (off) or a positive number.")

    @classmethod
    def from_config(cls, cfg) -> "FastPaths":
        return cls(amp=cfg.TEST.AMP.ENABLED, amp_dtype=cfg.TEST.AMP.DTYPE, channels_last=cfg.MODEL.CHANNELS_LAST,
                   compile=cfg.MODEL.COMPILE.ENABLED, compile_backend=cfg.MODEL.COMPILE.BACKEND,
                   compile_mode=cfg.MODEL.COMPILE.MODE, class_chunk=cfg.TEST.CLASS_CHUNK_SIZE,
                   device_type=torch.device(cfg.MODEL.DEVICE).type)

    def autocast(self, device: torch.device):
        """The inference autocast context for ``device`` (a no-op context when AMP is off).
        float16 needs CUDA: on the CPU it is an error naming the key to change."""
        if not self.amp:
            return contextlib.nullcontext()
        if device.type == "cpu" and self.amp_dtype == "float16":
            raise ValueError("TEST.AMP.DTYPE float16 needs CUDA: on the CPU use TEST.AMP.DTYPE bfloat16.")
        return torch.autocast(device.type, dtype=AMP_DTYPES[self.amp_dtype])

    def format_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) images in the memory order the encoder was converted to."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images


def compile_unavailable_reason(backend: str, device_type: str) -> str:
    """Why ``torch.compile`` with ``backend`` cannot run on ``device_type`` here ("" if it can)."""
    if not hasattr(torch, "compile") or not hasattr(nn.Module, "compile"):
        return f"torch {torch.__version__} has no torch.compile / nn.Module.compile (needs torch >= 2.2)"
    if backend == "inductor":
        if device_type == "cpu":
            compilers = [os.environ.get("CXX", ""), "g++", "c++", "clang++"]
            if not any(c and shutil.which(c) for c in compilers):
                return "the inductor backend needs a C++ compiler on the CPU (none of g++, c++, clang++ found)"
        elif device_type == "cuda":
            try:
                from torch.utils._triton import has_triton
            except ImportError:  # pragma: no cover - very old torch
                return "torch.utils._triton is missing"
            if not has_triton():
                return "the inductor backend needs Triton on CUDA (pip install triton)"
    return ""


def compile_modules(modules: Iterable[nn.Module], backend: str = "inductor", mode: str = "",
                    device_type: str = "cpu") -> List[nn.Module]:
    """``nn.Module.compile`` every module in place (state-dict keys stay the same). Returns the
    modules compiled: none, with a warning, where compilation is unavailable. An unknown backend
    is a configuration error."""
    modules = list(modules)
    reason = compile_unavailable_reason(backend, device_type)
    if reason:
        logger.warning(f"MODEL.COMPILE.ENABLED is set but {reason}: running eagerly.")
        return []
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ValueError(f"MODEL.COMPILE.BACKEND={backend!r} is not a torch.compile backend; known: {known}.")
    # a backend that fails on some graph at run time (missing headers, unsupported op) makes dynamo
    # run that frame eagerly instead of raising: compilation stays an optional speed-up
    torch._dynamo.config.suppress_errors = True
    kwargs = {"backend": backend, "dynamic": None}
    if mode:
        kwargs["mode"] = mode
    for m in modules:
        m.compile(**kwargs)
    return modules


def encoder_compile_targets(clip) -> List[nn.Module]:
    """The image encoder's pieces that run at a fixed shape: ConvNeXt stem and stages, or the
    ViT's residual blocks."""
    visual = clip.model.visual
    if clip.kind == "convnext":
        return [visual.trunk.stem, *visual.trunk.stages]
    return list(visual.transformer.resblocks)


def apply_fast_paths(model: nn.Module, fast: FastPaths, decoder_modules: Iterable[nn.Module] = ()) -> None:
    """Apply the build-time switches to a freshly built meta-architecture: channels-last weights,
    then ``torch.compile`` of its encoder stages and ``decoder_modules``."""
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)
    if fast.compile:
        compile_modules([*encoder_compile_targets(model.clip), *decoder_modules], fast.compile_backend,
                        fast.compile_mode, fast.device_type)


def chunked_over_classes(fn, x: torch.Tensor, num_classes: int, chunk: int, *per_class: torch.Tensor):
    """``fn(x, *per_class)`` for maps with the class axis folded into the batch, ``(B*N, ...)``
    rows ordered image-major, computed ``chunk`` classes at a time: every chunk holds the same
    classes of every image, so ``fn`` may repeat per-image tensors by ``rows // B`` as usual.
    ``fn`` must treat rows independently; the result equals ``fn(x, *per_class)``. ``chunk`` 0 or
    >= ``num_classes``: one call. Returns (B*N, ...) in ``fn``'s output dtype and memory order."""
    if not chunk or chunk >= num_classes:
        return fn(x, *per_class)
    b = x.shape[0] // num_classes
    out = None
    for s in range(0, num_classes, chunk):
        e = min(s + chunk, num_classes)

        def rows(t):
            return t.view(b, num_classes, *t.shape[1:])[:, s:e].flatten(0, 1)

        y = fn(rows(x), *(rows(t) for t in per_class))
        if out is None:
            cl = y.dim() == 4 and not y.is_contiguous() and y.is_contiguous(memory_format=torch.channels_last)
            out = torch.empty((b * num_classes, *y.shape[1:]), dtype=y.dtype, device=y.device,
                              memory_format=torch.channels_last if cl else torch.contiguous_format)
        out.view(b, num_classes, *y.shape[1:])[:, s:e] = y.view(b, e - s, *y.shape[1:])
    return out


class HostSyncCounter:
    """Counts, inside its ``with`` block, the operators that make the host wait for the device
    (on an accelerator; on the CPU they are merely counted, so tests can check the forward
    device-independently): data-dependent output shapes (``nonzero``, boolean-mask indexing,
    ``masked_select``, ``unique``, ``repeat_interleave`` without ``output_size``), scalar reads
    (``.item()``, ``float(t)``, ``bool(t)``), tensors built from Python data (``torch.tensor([...])``:
    a host-to-device copy on an accelerator) and copies between devices. ``.tolist()`` bypasses
    the dispatcher and is not seen. ``counts``: operator name -> calls."""

    SYNC_OPS = ("aten::nonzero", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::masked_select",
                "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive", "aten::lift_fresh")

    def __init__(self):
        self.counts = {}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def _record(self, func, args, kwargs) -> None:
        name = func._schema.name
        hit = name in self.SYNC_OPS
        if name == "aten::index" and len(args) > 1:
            hit = any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1] or ())
        elif name == "aten::repeat_interleave":  # tensor repeats: the output size is read from them
            hit = func._overloadname in ("Tensor", "self_Tensor") and (kwargs or {}).get("output_size") is None
        elif name in ("aten::_to_copy", "aten::copy_") and args and isinstance(args[0], torch.Tensor):
            other = (kwargs or {}).get("device") if name == "aten::_to_copy" else (
                args[1].device if len(args) > 1 and isinstance(args[1], torch.Tensor) else None)
            hit = other is not None and torch.device(other) != args[0].device
        if hit:
            self.counts[name] = self.counts.get(name, 0) + 1

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                counter._record(func, args, kwargs)
                return func(*args, **(kwargs or {}))

        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)
