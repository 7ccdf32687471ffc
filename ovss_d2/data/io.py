"""Reading images and label maps, with errors that name the file; writing label maps."""
import os

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
        return pil_to_rgb(image)
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
    return np.ascontiguousarray(image[..., :3])


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


def save_label(label: np.ndarray, num_classes: int, path: str) -> None:
    """(H, W) class ids as a grey PNG (:func:`read_label` reads it back): 8-bit for up to 255
    classes, 16-bit above; written atomically (a file at ``path`` is complete)."""
    from .datasets.preparation import write_label_png

    if num_classes > 65535:
        raise ValueError(f"{num_classes} classes do not fit a 16-bit label map.")
    write_label_png(path, np.ascontiguousarray(label, dtype=np.uint8 if num_classes <= 255 else np.uint16))
