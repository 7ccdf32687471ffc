"""Reading images and label maps, with errors that name the file."""
import numpy as np
from detectron2.utils.file_io import PathManager
from PIL import Image, ImageOps


class UnreadableImageError(OSError):
    """An image or label file that cannot be decoded."""


def read_image_rgb(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB of any 8/16-bit, grey, palette or RGBA image (EXIF orientation applied)."""
    try:
        with PathManager.open(path, "rb") as f:
            img = Image.open(f)
            img.load()
    except Exception as e:  # noqa: BLE001 - every decoder error means the same to the user
        raise UnreadableImageError(f"Cannot read image {path}: {e}") from e
    img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float32)
        arr = arr * (255.0 / max(float(arr.max()), 1.0))
        img = Image.fromarray(arr.astype(np.uint8))
    return np.asarray(img.convert("RGB"))


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
