"""What every open-vocabulary segmentor shares: its CLIP, its vocabulary and the vocabulary's text
embeddings, image normalisation (:func:`normalize_images`, also used outside the models) and padding,
fixed-resolution batches, the one-hot BCE segmentation losses, and the one resize of the scores to
the requested output size (:meth:`OpenVocabSegmentor.output_probs`)."""
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.data import MetadataCatalog
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import ImageList

from ...utils.vocabulary import check_vocabulary, dataset_vocabulary
from ..clip import CLIPWrapper, TextEmbeddingCache, default_cache_dir, resolve_templates
from ..fast_paths import FastPaths
from .. import losses  # its functions looked up at each call (a test patches the BCE)


def normalize_images(images: torch.Tensor, mean, std) -> torch.Tensor:
    """(..., 3, H, W) uint8 or float RGB in 0..255 -> float ``(images - mean) / std`` per channel,
    on ``mean``'s device. ``mean``, ``std``: 3 values each (in 0..255 units), tensors or lists
    (lists: on the images' device). Every place that feeds images to a model normalises here."""
    if not torch.is_tensor(mean):
        mean, std = torch.tensor(mean, device=images.device), torch.tensor(std, device=images.device)
    mean, std = mean.reshape(-1, 1, 1), std.reshape(-1, 1, 1)
    return (images.to(mean.device).float() - mean) / std


class OpenVocabSegmentor(nn.Module):
    """Base of the meta-architectures.

    The vocabulary used in training is the first training dataset's ``stuff_classes``; at test
    time it is whatever :meth:`set_vocabulary` was given last (the trainer sets each test dataset's
    names; the demo sets the user's). Text embeddings come from the shared
    :class:`TextEmbeddingCache` and are never recomputed for a vocabulary already seen.

    Inputs follow detectron2: a list of dicts with ``image`` (3, H, W) uint8 RGB, optional
    ``sem_seg`` (H, W) int64 targets, and ``height``/``width`` of the requested output.
    Outputs: a list of dicts with ``sem_seg`` (N, height, width) class probabilities.
    """

    def __init__(self, *, clip: CLIPWrapper, templates: Sequence[str],
                 train_class_names: Optional[Sequence[str]], test_class_names: Optional[Sequence[str]] = None,
                 text_cache_dir: Optional[str] = None, text_batch_size: int = 256, text_synonyms: str = "average",
                 size_divisibility: int = 32, ignore_value: int = 255, fast_paths: Optional[FastPaths] = None):
        super().__init__()
        self.fast_paths = fast_paths or FastPaths()  # speed switches (ovss_d2/modeling/fast_paths.py)
        self.clip = clip
        self.templates = list(templates)
        self.text_cache = TextEmbeddingCache(clip, text_cache_dir, text_batch_size, text_synonyms)
        self.train_class_names = list(train_class_names) if train_class_names else None
        self._vocabulary = list(test_class_names) if test_class_names else None
        max_stride = max(clip.strides)
        self.size_divisibility = size_divisibility * max_stride // math.gcd(size_divisibility, max_stride) \
            if size_divisibility > 0 else max_stride
        self.ignore_value = ignore_value
        self.register_buffer("pixel_mean", torch.tensor(clip.pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(clip.pixel_std).view(-1, 1, 1), False)
        self._device_embeddings = (None, None)

    @staticmethod
    def base_config(cfg, train_vocabulary: bool = True) -> Dict:
        """Constructor arguments common to all meta-architectures, from a config. Methods trained
        without labels (``train_vocabulary=False``) take no class names from DATASETS.TRAIN."""
        cache_dir = cfg.MODEL.TEXT.CACHE_DIR or default_cache_dir()
        return {
            "clip": CLIPWrapper.from_config(cfg),
            "templates": resolve_templates(cfg.MODEL.TEXT.TEMPLATES, cfg.MODEL.TEXT.CUSTOM_TEMPLATES),
            "train_class_names": dataset_vocabulary(cfg.DATASETS.TRAIN[0])
            if cfg.DATASETS.TRAIN and train_vocabulary else None,
            "test_class_names": dataset_vocabulary(cfg.DATASETS.TEST[0]) if cfg.DATASETS.TEST else None,
            "text_cache_dir": cache_dir,
            "text_batch_size": cfg.MODEL.TEXT.BATCH_SIZE,
            "text_synonyms": cfg.MODEL.TEXT.SYNONYMS,
            "size_divisibility": cfg.MODEL.SIZE_DIVISIBILITY,
            "ignore_value": cfg.MODEL.SEM_SEG_IGNORE_VALUE,
            "fast_paths": FastPaths.from_config(cfg),
        }

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    # ---- vocabulary ----------------------------------------------------------------------------
    # Per-benchmark settings a dataset's metadata may carry: metadata key -> model attribute
    # (e.g. ERR-Seg's CRM N, ZeroSeg's background threshold). Applied by :meth:`use_dataset`.
    DATASET_SETTINGS: Dict[str, str] = {}

    def use_dataset(self, dataset_name: str, apply_settings: bool = True) -> None:
        """Switch to a registered dataset: its class names become the vocabulary and, with
        ``apply_settings``, its metadata's per-benchmark settings (:attr:`DATASET_SETTINGS`) replace
        the configured values; a dataset without a setting gets the configured value back."""
        self.set_vocabulary(dataset_vocabulary(dataset_name))
        if not hasattr(self, "_configured_settings"):
            self._configured_settings = {attr: getattr(self, attr) for attr in self.DATASET_SETTINGS.values()}
        meta = MetadataCatalog.get(dataset_name)
        for key, attr in self.DATASET_SETTINGS.items():
            value = getattr(meta, key, None) if apply_settings else None
            setattr(self, attr, self._configured_settings[attr] if value is None else value)

    def set_vocabulary(self, class_names: Sequence[str]) -> None:
        """Class names used at inference from now on (synonyms separated by ", ")."""
        self._vocabulary = check_vocabulary(class_names, warn_duplicates=False)

    @property
    def vocabulary(self) -> List[str]:
        names = self.train_class_names if self.training else (self._vocabulary or self.train_class_names)
        if not names:
            raise ValueError(
                "No vocabulary: call model.set_vocabulary([...]) or configure DATASETS.TRAIN/TEST "
                "with registered datasets that have stuff_classes."
            )
        return names

    def class_embeddings(self, class_names: Optional[Sequence[str]] = None) -> torch.Tensor:
        """(N, P, D) normalised text embeddings of the vocabulary on the model's device. While a
        text encoder is being trained they are computed with gradients (never cached); otherwise
        they come from the cache and the text encoder runs once per vocabulary."""
        if self.training and any(p.requires_grad for _, p in self.clip.text_named_tensors()):
            return self.text_cache.encode(class_names or self.vocabulary, self.templates)
        emb = self.text_cache(class_names or self.vocabulary, self.templates)
        if self._device_embeddings[0] is not emb or self._device_embeddings[1].device != self.device:
            self._device_embeddings = (emb, emb.to(self.device))
        return self._device_embeddings[1]

    # ---- images --------------------------------------------------------------------------------
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) uint8 or float RGB on any device -> normalised float images on the model's
        device (the model side's one normalisation, :func:`normalize_images`)."""
        return normalize_images(images, self.pixel_mean, self.pixel_std)

    def preprocess_images(self, batched_inputs: List[Dict]) -> ImageList:
        """Normalised images padded to ``size_divisibility``: ImageList of (B, 3, Hp, Wp)."""
        return ImageList.from_tensors([self.normalize(x["image"]) for x in batched_inputs], self.size_divisibility)

    def sem_seg_targets(self, batched_inputs: List[Dict], images: ImageList) -> torch.Tensor:
        """(B, Hp, Wp) int64 targets padded with the ignore value."""
        targets = [x["sem_seg"].to(self.device) for x in batched_inputs]
        return ImageList.from_tensors(targets, self.size_divisibility, pad_value=self.ignore_value).tensor.long()

    def resize_to(self, x: torch.Tensor, size) -> torch.Tensor:
        """(B, C, h, w) -> (B, C, *size), bilinear; unchanged when already that size."""
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)

    def fixed_resolution_batch(self, batched_inputs: List[Dict], resolution) -> Tuple[torch.Tensor, torch.Tensor]:
        """Training as SED / ERR-Seg do: the normalised images padded to ``size_divisibility`` and
        resized to ``resolution`` (B, 3, h, w), and the padded targets (B, Hp, Wp) int64."""
        images = self.preprocess_images(batched_inputs)
        return self.resize_to(images.tensor, resolution), self.sem_seg_targets(batched_inputs, images)

    def segmentation_losses(self, outputs: Sequence[torch.Tensor], targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """One-hot BCE of each (B, N, h, w) logits, upsampled (bilinear, float) to the targets'
        (B, H, W) size: ``{"loss_sem_seg_0": ..., "loss_sem_seg_1": ...}``."""
        result = {}
        for i, logits in enumerate(outputs):
            logits = F.interpolate(logits.float(), size=targets.shape[-2:], mode="bilinear", align_corners=False)
            result[f"loss_sem_seg_{i}"] = losses.one_hot_bce_with_logits(logits, targets, self.ignore_value)
        return result

    def fixed_resolution_images(self, batched_inputs: List[Dict], resolution) -> torch.Tensor:
        """Inference as SED / ERR-Seg do: every image normalised and resized to ``resolution`` on its
        own (no padding): (B, 3, h, w)."""
        return torch.cat([self.resize_to(self.normalize(x["image"])[None], resolution) for x in batched_inputs])

    def output_probs(self, probs: Sequence[torch.Tensor], batched_inputs: List[Dict],
                     image_sizes: Optional[Sequence[Tuple[int, int]]] = None) -> List[Dict]:
        """The one resize to the requested output size: scores (B, N, h, w), or B maps (N, h_i, w_i),
        -> ``[{"sem_seg": (N, height, width)}]``, bilinear. With ``image_sizes`` (an ImageList's)
        each map is first cut to its image's unpadded region (detectron2's ``sem_seg_postprocess``);
        without, the whole map is resized. ``height`` / ``width`` default to the input image's size."""
        results = []
        for i, (prob, x) in enumerate(zip(probs, batched_inputs)):
            crop = image_sizes[i] if image_sizes is not None else prob.shape[-2:]
            height, width = x.get("height", x["image"].shape[-2]), x.get("width", x["image"].shape[-1])
            results.append({"sem_seg": sem_seg_postprocess(prob, crop, height, width)})
        return results
