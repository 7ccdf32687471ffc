"""Pixel-level conversions of the official benchmark annotations to contiguous class ids.

Every mapping is a lookup table (LUT) over the raw label values: ``lut[raw] = contiguous id``.
Raw values the official format never holds are marked ``UNKNOWN`` in the table, and meeting one
is an error naming the file (a wrong or corrupt archive), never a silent ignore.

The ``convert_*`` functions take a :class:`~.preparation.Item` and write its outputs; they are
module-level so that the prepare scripts' worker processes can receive them.
"""
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from ..io import read_label
from ..io import write_label_png
from .preparation import Item, write_jpeg

UNKNOWN = -1
IGNORE_8BIT = 255
IGNORE_16BIT = 65535


def build_lut(mapping: Dict[int, int], size: int, default: Optional[int] = None,
              dtype=np.uint8) -> np.ndarray:
    """(size,) int32 table: ``mapping[raw]`` for the listed raw values, ``default`` for every other
    value below ``size`` (None: those values are UNKNOWN, an error when met). ``dtype`` is the
    output label type the ids must fit in."""
    lut = np.full(size, UNKNOWN if default is None else default, np.int32)
    info = np.iinfo(dtype)
    for raw, cid in mapping.items():
        if not 0 <= raw < size:
            raise ValueError(f"raw label {raw} outside the table 0..{size - 1}")
        if not info.min <= cid <= info.max:
            raise ValueError(f"class id {cid} does not fit {np.dtype(dtype).name}")
        lut[raw] = cid
    return lut


def contiguous_mapping(raw_ids: Sequence[int], offset: int = 0) -> Dict[int, int]:
    """raw id of class i -> i + offset."""
    return {int(r): i + offset for i, r in enumerate(raw_ids)}


def apply_lut(raw: np.ndarray, lut: np.ndarray, dtype, source: str = "") -> np.ndarray:
    """(H, W) raw labels -> (H, W) ``dtype`` contiguous ids; raw values outside the table or marked
    UNKNOWN raise a ValueError naming ``source`` and the values."""
    raw = np.asarray(raw)
    if raw.size and (raw.min() < 0 or raw.max() >= len(lut)):
        bad = np.unique(raw[(raw < 0) | (raw >= len(lut))])[:5].tolist()
        raise ValueError(f"{source}: label values {bad} outside the official range 0..{len(lut) - 1}")
    out = lut[raw]
    if (out == UNKNOWN).any():
        bad = np.unique(raw[out == UNKNOWN])[:5].tolist()
        raise ValueError(f"{source}: label values {bad} do not occur in the official format of this dataset")
    return out.astype(dtype)


# ---- raw formats --------------------------------------------------------------------------------
def ade20k_full_class_mask(seg: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 ``*_seg.png`` of the full ADE20K release -> (H, W) int32 class index
    ``R / 10 * 256 + G`` (index into the release's ``objectnames`` + 1; 0 = unannotated)."""
    if seg.ndim != 3 or seg.shape[2] < 3:
        raise ValueError(f"expected an RGB *_seg.png, got shape {seg.shape}")
    return (seg[..., 0].astype(np.int32) // 10) * 256 + seg[..., 1].astype(np.int32)


def read_pascal_context_mat(path: str) -> np.ndarray:
    """(H, W) ``LabelMap`` of a PASCAL-Context ``trainval/<id>.mat`` (values 0..459, 0 = unlabeled)."""
    import scipy.io

    mat = scipy.io.loadmat(path)
    if "LabelMap" not in mat:
        keys = sorted(k for k in mat if not k.startswith("__"))
        raise ValueError(f"{path} has no 'LabelMap' (fields: {keys}): not a PASCAL-Context trainval .mat file")
    label = np.asarray(mat["LabelMap"])
    if not np.issubdtype(label.dtype, np.integer):
        if not np.array_equal(label, np.round(label)):
            raise ValueError(f"{path}: LabelMap holds non-integer values")
        label = label.astype(np.int64)
    return label


def ade20k_full_resize_shape(height: int, width: int, max_short: int = 512) -> Optional[Tuple[int, int]]:
    """The official ADE20K-847 validation images are shrunk so that the short side is at most
    ``max_short`` (aspect kept, rounded). Returns the new (height, width), or None (no resize)."""
    if width >= height > max_short:
        return max_short, round(width / float(height) * max_short)
    if height >= width > max_short:
        return round(height / float(width) * max_short), max_short
    return None


# ---- conversion functions (one Item each) -------------------------------------------------------
class RemapLabels:
    """Item ``(label image,) -> outputs``: one LUT per output (e.g. VOC without and with background)."""

    def __init__(self, luts: Sequence[np.ndarray], dtypes: Sequence):
        self.luts, self.dtypes = list(luts), list(dtypes)

    def __call__(self, item: Item) -> None:
        raw = read_label(item.inputs[0])
        for out, lut, dtype in zip(item.outputs, self.luts, self.dtypes):
            write_label_png(out, apply_lut(raw, lut, dtype, item.inputs[0]))


class RemapPascalContext(RemapLabels):
    """Item ``(trainval/<id>.mat, image) -> outputs``: the LabelMap through one LUT per output."""

    def __call__(self, item: Item) -> None:
        raw = read_pascal_context_mat(item.inputs[0])
        if len(item.inputs) > 1:
            with Image.open(item.inputs[1]) as im:
                if (im.height, im.width) != raw.shape:
                    raise ValueError(f"LabelMap is {raw.shape}, image {item.inputs[1]} is {(im.height, im.width)}")
        for out, lut, dtype in zip(item.outputs, self.luts, self.dtypes):
            write_label_png(out, apply_lut(raw, lut, dtype, item.inputs[0]))


class ConvertADE20KFull:
    """Item ``(image.jpg, image_seg.png) -> (resized image.jpg, 16-bit label.png)`` (the official
    847-class recipe: short side <= 512, bilinear image, nearest labels, 65535 = ignore)."""

    def __init__(self, lut: np.ndarray, max_short: int = 512):
        self.lut, self.max_short = lut, max_short

    def __call__(self, item: Item) -> None:
        import cv2

        with Image.open(item.inputs[0]) as im:
            img = np.asarray(im)
        with Image.open(item.inputs[1]) as im:
            mask = ade20k_full_class_mask(np.asarray(im))
        if mask.shape != img.shape[:2]:
            raise ValueError(f"{item.inputs[1]} is {mask.shape}, its image is {img.shape[:2]}")
        shape = ade20k_full_resize_shape(*mask.shape, self.max_short)
        if shape is not None:
            img = cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
        write_jpeg(item.outputs[0], img)
        write_label_png(item.outputs[1], apply_lut(mask, self.lut, np.uint16, item.inputs[1]))
