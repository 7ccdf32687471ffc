"""Reading images and label maps, with errors that name the file; writing label maps; finding
input files by glob."""
import fnmatch
import glob
import os
import re
from contextlib import contextmanager
from typing import Iterator, List

import numpy as np
from detectron2.utils.file_io import PathManager
from PIL import Image, ImageOps


class UnreadableImageError(OSError):
    """An image or label file that cannot be decoded."""


def read_image_rgb(path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of any 8/16-bit, grey, palette or RGBA image file (EXIF orientation
    applied); ``path`` is a str or a ``pathlib.Path``."""
    path = os.fspath(path)
    try:
        with PathManager.open(path, "rb") as f:
            img = Image.open(f)
            img.load()
    except Exception as e:  # noqa: BLE001 - every decoder error means the same to the user
        raise UnreadableImageError(f"Cannot read image {path}: {e}") from e
    return pil_to_rgb(img)


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a PIL image of any mode (EXIF orientation applied; 16/32-bit grey
    scaled to 0..255 by its maximum)."""
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        arr = arr * (255.0 / max(float(arr.max()), 1.0))
        img = Image.fromarray(arr.astype(np.uint8))
    return np.asarray(img.convert("RGB"))


IMAGE_TYPES = "a file path (str or pathlib.Path), a PIL image, or an (H, W, 3) uint8 RGB NumPy array or torch tensor"


def as_rgb_image(image) -> np.ndarray:
    """Whatever a user passes as an image -> (H, W, 3) uint8 RGB: a path (str or ``pathlib.Path``),
    a PIL image, or a NumPy array / torch tensor that is (H, W), (H, W, 3) or (H, W, 4) (tensors
    also (3, H, W), torchvision's layout) of dtype uint8. Anything else is a ``TypeError`` or
    ``ValueError`` saying what was expected."""
    if isinstance(image, (str, os.PathLike)):
        return read_image_rgb(image)
    if isinstance(image, Image.Image):
        return check_not_empty(pil_to_rgb(image))
    if type(image).__module__.startswith("torch"):
        image = _tensor_to_hwc(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"Expected {IMAGE_TYPES}; got {type(image).__name__}.")
    if image.dtype != np.uint8:
        raise ValueError(f"Expected a uint8 image (0..255); got dtype {image.dtype}. Convert it first, e.g. "
                         "(image * 255).round().astype(np.uint8) for values in 0..1.")
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise ValueError(f"Expected an (H, W, 3) RGB image; got shape {tuple(image.shape)}.")
    return check_not_empty(np.ascontiguousarray(image[..., :3]))


def check_not_empty(image: np.ndarray) -> np.ndarray:
    """``image`` (H, W, C) itself, or a ``ValueError`` when it has no pixel (H or W is 0)."""
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"Expected an image with pixels; got one of size {image.shape[1]}x{image.shape[0]} "
                         "(width x height). Skip empty images before segmenting.")
    return image


def _tensor_to_hwc(tensor) -> np.ndarray:
    """A torch tensor as a NumPy array, (3, H, W) moved to (H, W, 3)."""
    import torch

    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"Expected {IMAGE_TYPES}; got {type(tensor).__name__}.")
    if tensor.dtype != torch.uint8:
        raise ValueError(f"Expected a uint8 image tensor (0..255); got {tensor.dtype}. Convert it first, e.g. "
                         "(image * 255).round().to(torch.uint8) for values in 0..1.")
    if tensor.ndim == 3 and tensor.shape[0] in (1, 3) and tensor.shape[2] not in (3, 4):
        tensor = tensor.permute(1, 2, 0)
        if tensor.shape[2] == 1:
            tensor = tensor[..., 0]
    return tensor.detach().cpu().numpy()


def read_label(path: str) -> np.ndarray:
    """(H, W) label map as stored: palette indices or grey values; uint8, or uint16 / int32 when the
    dataset has more than 255 classes (16-bit PNG)."""
    try:
        with PathManager.open(path, "rb") as f:
            img = Image.open(f)
            img.load()
    except Exception as e:  # noqa: BLE001
        raise UnreadableImageError(f"Cannot read label map {path}: {e}") from e
    arr = np.asarray(img)
    if arr.ndim != 2:
        raise ValueError(f"Label map {path} has shape {arr.shape}; expected one channel (H, W).")
    return arr


# The most classes a label PNG holds: 16-bit grey, ids 0..65534 (65535 is the ignore value of
# 16-bit datasets). PNG has no 32-bit grey mode, so a larger vocabulary is refused up front.
MAX_LABEL_CLASSES = 65535


def check_label_classes(num_classes: int) -> None:
    """A ``ValueError`` when ``num_classes`` do not fit a label PNG (:data:`MAX_LABEL_CLASSES`):
    the entry points call it before any inference."""
    if num_classes > MAX_LABEL_CLASSES:
        raise ValueError(f"{num_classes:,} classes do not fit a 16-bit label map (at most {MAX_LABEL_CLASSES:,}): "
                         f"split the vocabulary into parts of at most {MAX_LABEL_CLASSES:,} classes.")


def save_label(label: np.ndarray, num_classes: int, path: str) -> None:
    """(H, W) class ids as a grey PNG (:func:`read_label` reads it back): 8-bit for up to 255
    classes, 16-bit above; written atomically (a file at ``path`` is complete)."""
    check_label_classes(num_classes)
    write_label_png(path, np.ascontiguousarray(label, dtype=np.uint8 if num_classes <= 255 else np.uint16))


# ---- atomic writing ------------------------------------------------------------------------------
@contextmanager
def atomic_output(path: str) -> Iterator[str]:
    """Yields a temporary path beside ``path`` and renames it to ``path`` once the block has written
    it: an output that exists is complete, even after a kill."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.part"
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_label_png(path: str, label: np.ndarray) -> None:
    """(H, W) label map as a grey PNG: 8-bit for uint8 maps, 16-bit for uint16 maps (> 255 classes,
    ignore 65535). Other dtypes are refused (no silent wrap-around)."""
    if label.ndim != 2 or label.dtype not in (np.uint8, np.uint16):
        raise TypeError(f"{path}: label maps are (H, W) uint8 or uint16, got {label.shape} {label.dtype}")
    with atomic_output(path) as tmp:
        Image.fromarray(np.ascontiguousarray(label)).save(tmp, format="PNG")


_MAGIC = re.compile(r"[*?[]")


def glob_files(pattern: str) -> List[str]:
    """Files matching a glob ``pattern``, sorted: ``glob.glob(pattern, recursive=True)`` without
    its folders, except that a ``**`` walk visits every folder once (by real path). ``glob.glob``
    follows symbolic links into folders, so a link to a parent folder makes it list
    ``a/back/back/...`` until the path is too long, and several such links make that exponential;
    here a folder reached again through a link is skipped. As in ``glob``, ``**`` matches zero or
    more folders and no wildcard matches a name starting with "." unless the pattern's part does."""
    if "**" not in pattern:
        return sorted(m for m in glob.glob(pattern) if os.path.isfile(m))
    parts = pattern.replace(os.sep, "/").split("/")
    fixed = 0
    while fixed < len(parts) - 1 and not _MAGIC.search(parts[fixed]):
        fixed += 1
    base = "/".join(parts[:fixed]) or ("/" if pattern.startswith("/") else ".")
    rest = parts[fixed:]
    if not os.path.isdir(base):
        return []
    visited, found = {os.path.realpath(base)}, []
    for root, dirs, files in os.walk(base, followlinks=True):
        keep = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(root, d))
            if real not in visited:
                visited.add(real)
                keep.append(d)
        dirs[:] = keep
        rel = os.path.relpath(root, base)
        names = [] if rel == "." else rel.split(os.sep)
        found.extend(os.path.normpath(os.path.join(root, f)) for f in files if _glob_match(names + [f], rest))
    return sorted(found)


def _glob_match(names: List[str], patterns: List[str]) -> bool:
    """Whether the path parts ``names`` match the pattern parts (``**``: zero or more parts)."""
    if not patterns:
        return not names
    head = patterns[0]
    if head == "**":
        return _glob_match(names, patterns[1:]) or (
            bool(names) and not names[0].startswith(".") and _glob_match(names[1:], patterns))
    if not names or (names[0].startswith(".") and not head.startswith(".")):
        return False
    return fnmatch.fnmatchcase(names[0], head) and _glob_match(names[1:], patterns[1:])
