"""What the golden-output script and the tests that read its outputs both rebuild: the seeded
weights of an official state dict, the input images and labels, and the gradient entries compared.

Plain torch / NumPy, no ovss-d2 import: ``make_golden.py`` runs it beside the authors' code (whose
vendored ``open_clip`` must not meet ours).
"""
import hashlib
import json
import math
from typing import Dict, Iterable, Sequence, Tuple

import numpy as np
import torch

GRAD_SAMPLES = 16  # gradient entries compared per tensor (plus its norm and largest magnitude)


def key_seed(key: str) -> int:
    """A 63-bit seed from a state-dict key."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") >> 1


def seeded_tensor(key: str, shape: Sequence[int]) -> torch.Tensor:
    """The tensor of ``key``: standard normal values drawn from a generator seeded by the key,
    scaled so that activations stay of order one through a deep network: matrices and kernels by
    1 / sqrt(fan-in), norm weights around 1, biases and layer scales small, embeddings 0.02."""
    x = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(key_seed(key)))
    name = key.rsplit(".", 1)[-1]
    if x.dim() == 0:
        return x * 0.1
    if name == "gamma":
        return x * 0.1
    if x.dim() == 1:
        return 1.0 + 0.1 * x if name == "weight" else 0.02 * x
    if "token_embedding" in key or "positional_embedding" in key:
        return 0.02 * x
    if key.endswith("text_projection"):  # used as x @ P: fan-in is the first dimension
        return x / math.sqrt(x.shape[0])
    return x / math.sqrt(x[0].numel())


def seeded_state_dict(shapes: Dict[str, Sequence[int]]) -> Dict[str, torch.Tensor]:
    """Every tensor of a state-dict manifest (key -> shape), seeded by its key."""
    return {k: seeded_tensor(k, s) for k, s in shapes.items()}


def manifest_digest(shapes: Dict[str, Sequence[int]]) -> str:
    """A digest of the (key, shape) pairs: both sides must seed the same layout."""
    items = sorted((k, [int(d) for d in s]) for k, s in shapes.items())
    return hashlib.sha256(json.dumps(items).encode()).hexdigest()


def grad_sample_index(key: str, numel: int) -> torch.Tensor:
    """The flat indices of the gradient entries compared for ``key``."""
    g = torch.Generator().manual_seed(key_seed("grad:" + key))
    return torch.randint(0, numel, (min(GRAD_SAMPLES, numel),), generator=g)


def grad_summary(named_grads: Iterable[Tuple[str, torch.Tensor]]):
    """(keys, samples (T, GRAD_SAMPLES), largest magnitude (T,), norm (T,)) of the gradients, keyed
    by official names; a tensor with fewer entries is padded with NaN."""
    keys, samples, absmax, norms = [], [], [], []
    for key, g in named_grads:
        flat = g.detach().float().reshape(-1)
        row = torch.full((GRAD_SAMPLES,), float("nan"))
        idx = grad_sample_index(key, flat.numel())
        row[:idx.numel()] = flat[idx]
        keys.append(key)
        samples.append(row)
        absmax.append(flat.abs().max())
        norms.append(flat.norm())
    return keys, torch.stack(samples).numpy(), torch.stack(absmax).numpy(), torch.stack(norms).numpy()


def golden_image(height: int, width: int, phase: int = 0) -> torch.Tensor:
    """A (3, H, W) uint8 image from integer arithmetic only (the same bytes everywhere): stripes,
    a checkerboard and a diagonal ramp, shifted by ``phase``."""
    y, x = np.mgrid[0:height, 0:width].astype(np.int64)
    r = (x * 9 + y * 2 + 40 * phase) % 256
    g = np.where(((x + 3 * phase) // 8 + y // 8) % 2 == 0, 200, 60) + (y * 3) % 40
    b = (x * y + 17 * phase) % 251
    return torch.from_numpy(np.stack([r, g, b]).astype(np.uint8))


def golden_labels(height: int, width: int, blocks: Sequence[Sequence[int]], ignore: int = 255) -> torch.Tensor:
    """(H, W) int64 labels: the image split into a grid of equal blocks, ``blocks[i][j]`` the class of
    block (i, j); a one-pixel border is ``ignore``."""
    rows, cols = len(blocks), len(blocks[0])
    y, x = np.mgrid[0:height, 0:width]
    label = np.asarray(blocks, np.int64)[y * rows // height, x * cols // width]
    label[0], label[-1], label[:, 0], label[:, -1] = ignore, ignore, ignore, ignore
    return torch.from_numpy(label)


def no_stochastic_layers(model: torch.nn.Module) -> None:
    """Stochastic depth and dropout off, in place (for a training step compared across codebases)."""
    for m in model.modules():
        if type(m).__name__ == "DropPath":
            m.drop_prob = 0.0
        elif isinstance(m, torch.nn.Dropout):
            m.p = 0.0
