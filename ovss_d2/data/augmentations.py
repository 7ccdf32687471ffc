"""Training augmentations beyond detectron2's own."""
import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import NoOpTransform, Transform
from PIL import Image


class PhotometricDistortion(Transform):
    """SSD-style colour distortion of a uint8 RGB image: brightness shift, contrast scale,
    saturation scale and hue shift (HSV), each drawn by :class:`RandomPhotometricDistortion`.
    Geometry and labels are untouched."""

    def __init__(self, brightness: float, contrast: float, saturation: float, hue: float, contrast_first: bool):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        x = img.astype(np.float32) + self.brightness
        if self.contrast_first:
            x = x * self.contrast
        x = np.clip(x, 0, 255).astype(np.uint8)
        if self.saturation != 1.0 or self.hue != 0.0:
            hsv = np.asarray(Image.fromarray(x).convert("HSV")).astype(np.float32)
            hsv[..., 1] = np.clip(hsv[..., 1] * self.saturation, 0, 255)
            hsv[..., 0] = (hsv[..., 0] + self.hue * 255.0 / 360.0) % 256
            x = np.asarray(Image.fromarray(hsv.astype(np.uint8), "HSV").convert("RGB"))
        if not self.contrast_first:
            x = np.clip(x.astype(np.float32) * self.contrast, 0, 255).astype(np.uint8)
        return x

    def apply_coords(self, coords):
        return coords

    def apply_segmentation(self, segmentation):
        return segmentation


class RandomPhotometricDistortion(T.Augmentation):
    """Each distortion applied with probability 1/2 (SSD / Mask2Former's COLOR_AUG_SSD):
    brightness +-32, contrast x[0.5, 1.5], saturation x[0.5, 1.5], hue +-18 degrees."""

    def __init__(self, brightness: float = 32, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue: float = 18):
        super().__init__()
        self._init(locals())

    def get_transform(self, image):
        if image.ndim != 3 or image.shape[2] != 3:
            return NoOpTransform()
        on = np.random.rand(4) < 0.5
        return PhotometricDistortion(
            brightness=float(np.random.uniform(-self.brightness, self.brightness)) if on[0] else 0.0,
            contrast=float(np.random.uniform(*self.contrast)) if on[1] else 1.0,
            saturation=float(np.random.uniform(*self.saturation)) if on[2] else 1.0,
            hue=float(np.random.uniform(-self.hue, self.hue)) if on[3] else 0.0,
            contrast_first=bool(np.random.rand() < 0.5),
        )
