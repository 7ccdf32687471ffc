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
  classes at a time at inference, which bounds peak memory at large vocabularies (same outputs;
  ``cost_aggregation/class_chunks.py``).

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
