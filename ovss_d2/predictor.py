"""A Python API for inference with any vocabulary, usable without train_net.py.

    from ovss_d2.predictor import Predictor
    predictor = Predictor("configs/toy/sed_toy.yaml", "output/toy/sed/model_final.pth")
    result = predictor.predict("photo.jpg", ["cat", "dog", "grass"])
    result.label        # (H, W) int64 class ids at the image's size
    result.scores       # (N, h, w) float32 class scores at the working resolution
    result.fractions()  # {"grass": 0.61, "cat": 0.22, ...}

Large images never exhaust memory: the image is processed at a working resolution (long side at
most ``max_size``), either whole (``mode="resize"``) or in overlapping windows (``mode="slide"``),
and the label map is brought back to full size by upsampling the scores a few classes at a time.
"""
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import sem_seg_postprocess
from PIL import Image

from .checkpoint import OVSSCheckpointer
from .data.io import as_rgb_image
from .modeling.clip import resolve_templates
from .modeling.sliding_window import sliding_window_scores
from .utils.visualize import class_fractions
from .utils.vocabulary import check_vocabulary, deduplicate

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray, torch.Tensor]
# The smallest working resolution (long side) and sliding window, in pixels: our choice. Below it
# the image is smaller than one cell of a stride-32 feature map (ConvNeXt CLIPs, SIZE_DIVISIBILITY's
# default), so every pixel would get the same class.
MIN_SIZE = 32


def check_sizes(max_size, window: int = MIN_SIZE, max_size_name: str = "max_size", window_name: str = "window"):
    """A ``ValueError`` naming the argument when ``max_size`` or ``window`` is not an integer of at
    least :data:`MIN_SIZE` pixels (the demos pass their flags' names)."""
    for name, value in ((max_size_name, max_size), (window_name, window)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < MIN_SIZE:
            raise ValueError(f"{name} must be a whole number of pixels, at least {MIN_SIZE}; got {value!r} (a smaller "
                             "working image gives every pixel the same class).")


@dataclass
class Prediction:
    label: np.ndarray  # (H, W) int64
    scores: torch.Tensor  # (N, h, w) float32 at the working resolution
    class_names: List[str] = field(default_factory=list)

    def fractions(self) -> Dict[str, float]:
        return class_fractions(self.label, self.class_names)


def upsample_argmax(scores: torch.Tensor, size, classes_per_chunk: int = 8) -> torch.Tensor:
    """argmax over classes of the bilinearly upsampled (N, h, w) scores at ``size`` (H, W),
    computed a few classes at a time: memory O(chunk * H * W), not O(N * H * W)."""
    best = best_idx = None
    for start in range(0, scores.shape[0], classes_per_chunk):
        up = sem_seg_postprocess(scores[start:start + classes_per_chunk], scores.shape[-2:], *size)
        val, idx = up.max(dim=0)
        idx += start
        if best is None:
            best, best_idx = val, idx
        else:
            better = val > best
            best = torch.where(better, val, best)
            best_idx = torch.where(better, idx, best_idx)
    return best_idx


class Predictor:
    """Build a model from a config (+ weights) and segment images with any vocabulary.

    Args:
        config: a config file path or a detectron2 CfgNode (with ovss-d2 keys).
        weights: a checkpoint (ours or an official layout, loaded strictly unless
            ``MODEL.WEIGHTS_STRICT False``); "" uses the config's MODEL.WEIGHTS, or only the CLIP
            weights of MODEL.CLIP.PRETRAINED when that is empty too. A checkpoint holds the whole
            model, so MODEL.CLIP.PRETRAINED need not be available when one is given.
        opts: config overrides ``[KEY, VALUE, ...]``.
        device: "cpu", "cuda", ... (default: the config's); without CUDA, "cuda" falls back to the
            CPU with a warning.
        templates: a built-in template set name or a list of templates (default: the config's).
        mode: "resize" (whole image at the working resolution) or "slide" (windows of ``window``
            pixels with 1/3 overlap, plus the whole image, averaged).
        max_size: long side of the working resolution, at least :data:`MIN_SIZE` pixels.
        window: side of the sliding windows (``mode="slide"``), at least :data:`MIN_SIZE` pixels.
    """

    def __init__(self, config, weights: str = "", opts: Sequence[str] = (), device: Optional[str] = None,
                 templates=None, mode: str = "resize", max_size: int = 1024, window: int = 512):
        from .engine import OVSSTrainer, check_weights_file, load_config, resolve_device, skip_initial_clip_weights

        if mode not in ("resize", "slide"):
            raise ValueError(f"mode must be 'resize' or 'slide', got {mode!r}")
        check_sizes(max_size, window)
        if isinstance(config, (str, os.PathLike)):
            cfg = load_config(os.fspath(config), list(opts))
        else:
            cfg = config.clone()
            cfg.defrost()
            cfg.merge_from_list(list(opts))
        if device:
            cfg.MODEL.DEVICE = device
        resolve_device(cfg)
        cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (), ()
        weights = os.fspath(weights or cfg.MODEL.WEIGHTS)
        check_weights_file(weights, "Weights")
        template_list = None
        if templates is not None:
            template_list = (resolve_templates(templates) if isinstance(templates, str)
                             else resolve_templates("", list(templates)))
        skip_initial_clip_weights(cfg, weights)
        self.cfg, self.mode, self.max_size, self.window = cfg, mode, max_size, window
        self.model = OVSSTrainer.build_model(cfg).eval()
        if weights:
            OVSSCheckpointer(self.model, strict=cfg.MODEL.WEIGHTS_STRICT).load(weights)
        if template_list is not None:
            self.model.templates = template_list
        self.class_names: List[str] = []
        self._positions: Optional[torch.Tensor] = None  # user class -> model class, with duplicates

    @property
    def device(self) -> torch.device:
        return self.model.device

    def set_vocabulary(self, class_names: Sequence[str]) -> None:
        """Class names for every later image (a list; see :func:`ovss_d2.utils.check_vocabulary`).
        A name given twice is segmented once (the model's classes interact, e.g. SED's class
        attention): its score is repeated and its pixels get its first id."""
        self.class_names = check_vocabulary(class_names)
        unique, positions = deduplicate(self.class_names)
        self._positions = None if len(unique) == len(positions) else torch.tensor(positions)
        self.model.set_vocabulary(unique)
        self.model.class_embeddings()  # embed now (once; cached for every later image)

    def _working_image(self, image: np.ndarray) -> torch.Tensor:
        h, w = image.shape[:2]
        scale = min(1.0, self.max_size / max(h, w))
        t = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if scale < 1.0:
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            t = F.interpolate(t[None].float(), size=size, mode="bilinear", align_corners=False)[0]
            t = t.round().clamp(0, 255).to(torch.uint8)
        return t

    @torch.no_grad()
    def _run(self, images: List[torch.Tensor]) -> List[torch.Tensor]:
        inputs = [{"image": im.to(self.device), "height": im.shape[-2], "width": im.shape[-1]} for im in images]
        scores = [o["sem_seg"].float().cpu() for o in self.model(inputs)]
        return scores if self._positions is None else [s[self._positions] for s in scores]

    def _slide(self, image: torch.Tensor) -> torch.Tensor:
        """(3, H, W) -> (N, H, W): the mean of the windows' scores (square windows of ``window``
        pixels, two thirds of a window apart) and the whole image's scores."""
        win = min(self.window, *image.shape[-2:])
        windows = sliding_window_scores(image, win, max(1, math.ceil(win * 2 / 3)), lambda w: self._run([w])[0])
        return (windows + self._run([image])[0]) / 2

    def predict_batch(self, images: Sequence[ImageLike],
                      vocabulary: Optional[Sequence[str]] = None) -> List[Prediction]:
        """Segment several images in one model call (each a path, a PIL image or an (H, W, 3)
        uint8 RGB array or tensor); an empty list gives an empty list."""
        if vocabulary is not None and (isinstance(vocabulary, str) or not isinstance(vocabulary, Sequence)
                                       or list(vocabulary) != self.class_names):
            self.set_vocabulary(vocabulary)
        if not self.class_names:
            raise ValueError("No vocabulary: pass one to predict() or call set_vocabulary().")
        if isinstance(images, (str, os.PathLike, np.ndarray)) or not isinstance(images, Sequence):
            raise TypeError("predict_batch() takes a list of images; use predict() for one image.")
        check_sizes(self.max_size, self.window)  # public attributes: they may have been changed
        arrays = [as_rgb_image(im) for im in images]
        if not arrays:
            return []
        work = [self._working_image(a) for a in arrays]
        scores = [self._slide(t) for t in work] if self.mode == "slide" else self._run(work)
        return [Prediction(upsample_argmax(s, a.shape[:2]).numpy().astype(np.int64), s, list(self.class_names))
                for s, a in zip(scores, arrays)]

    def predict(self, image: ImageLike, vocabulary: Optional[Sequence[str]] = None) -> Prediction:
        """Segment one image: a path (str or ``pathlib.Path``), a PIL image, or an (H, W, 3) uint8
        RGB NumPy array or torch tensor."""
        return self.predict_batch([image], vocabulary)[0]

