"""ZeroSeg (Chen et al., ICCV 2023): segmentation learned from unlabeled images by distilling a
frozen CLIP image encoder into segment tokens.

Training (images only, ``CenterCropImageMapper``): an MAE-style ViT encodes 40% of the patches; an
MAE decoder reconstructs the masked ones; a grouping head merges the visible tokens into segment
tokens and a global embedding z. The teacher (``MODEL.CLIP``, paper: ViT-L/14) embeds the whole
image and the cells of its 2x2, 3x3, 4x4 grids (cached or on the fly); losses: L1(z, every view),
segment matching (paper: each segment to its nearest grid cell; ``MATCHING`` and
``REVERSE_MATCHING_WEIGHT`` switch to the variants that are not in the paper) and the
reconstruction MSE.

Inference (``TEST_MODE``: the whole image, or GroupViT's sliding windows, each window segmented
and named on its own and the scores averaged): every patch visible, each pixel belongs to one
final group, a group's class scores are
softmax(scale * cosine(segment, text)), with GroupViT's two rules as switches (the image's top-k
classes, ``TEST_TOPK_CLASSES``; the background threshold capped by the best group probability,
``BACKGROUND_CAP``); a ``background`` class in the vocabulary takes the pixels whose best score is
below the threshold. Not in the paper, ``GROUP_NAMING teacher`` names each group by the teacher's
dense embedding averaged over the group's pixels instead of its segment embedding.
"""
from functools import partial
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import ImageList

from ..backbones import MAEDecoder, MaskedViTEncoder, masked_patch_mse
from ..distillation import (coverage_matching_loss, local_view_mask, multiscale_distillation_loss,
                            one_to_one_matching_loss, reverse_matching_loss, segment_matching_loss,
                            teacher_view_features, token_cell_overlap)
from ..grouping import assignment_to_pixels, compose_assignments
from ..heads import GroupingSegmentationHead
from ..sliding_window import sliding_window_scores
from .base import OpenVocabSegmentor

BACKGROUND = "background"
MATCHING_MODES = ("nearest", "one_to_one", "coverage")
NAMING_MODES = ("segment", "teacher")
L1_DISTANCES = ("mean", "sum")
TEST_MODES = ("whole", "slide")


def is_background(name: str) -> bool:
    return name.split(",")[0].strip().lower() == BACKGROUND


@META_ARCH_REGISTRY.register()
class ZeroSeg(OpenVocabSegmentor):
    DATASET_SETTINGS = {"background_threshold": "background_threshold"}

    @configurable
    def __init__(self, *, encoder: MaskedViTEncoder, decoder: MAEDecoder, head: GroupingSegmentationHead,
                 image_size: int = 224, mask_ratio: float = 0.6, grids=(1, 2, 3, 4), norm_pix_loss: bool = True,
                 loss_weights: Dict[str, float] = None, matching: str = "nearest", teacher_view_size: int = 0,
                 logit_scale: float = 100.0, test_topk_classes: int = 5, background_threshold: float = 0.95,
                 background_cap: bool = True, group_naming: str = "segment", teacher_naming_size: int = 0,
                 distill_grids=(), l1_distance: str = "mean", test_mode: str = "whole", test_crop_size: int = 448,
                 test_stride: int = 224, **kwargs):
        super().__init__(**kwargs)
        self.clip.set_trainable(image=False, text=False)  # the teacher and the text encoder stay frozen
        self.encoder, self.decoder, self.head = encoder, decoder, head
        self.image_size, self.mask_ratio, self.grids = image_size, mask_ratio, list(grids)
        self.teacher_view_size = teacher_view_size or image_size
        if 1 not in self.grids:
            raise ValueError(f"MODEL.ZEROSEG.GRIDS {self.grids} must include 1 (the whole image).")
        if matching not in MATCHING_MODES:
            raise ValueError(f"MODEL.ZEROSEG.MATCHING {matching!r} is not one of {MATCHING_MODES}.")
        self.register_buffer("local_views", local_view_mask(self.grids), persistent=False)
        self.distill_grids = list(distill_grids) or self.grids
        if not set(self.distill_grids) <= set(self.grids):
            raise ValueError(f"MODEL.ZEROSEG.DISTILL_GRIDS {self.distill_grids} must be among GRIDS {self.grids}.")
        self.register_buffer("distill_views", torch.tensor([g in self.distill_grids for g in self.grids
                                                            for _ in range(g * g)]), persistent=False)
        if l1_distance not in L1_DISTANCES:
            raise ValueError(f"MODEL.ZEROSEG.L1_DISTANCE {l1_distance!r} is not one of {L1_DISTANCES}.")
        if test_mode not in TEST_MODES:
            raise ValueError(f"MODEL.ZEROSEG.TEST_MODE {test_mode!r} is not one of {TEST_MODES}.")
        self.l1_distance, self.test_mode = l1_distance, test_mode
        self.test_crop_size, self.test_stride = test_crop_size, test_stride
        self.norm_pix_loss, self.matching = norm_pix_loss, matching
        self.loss_weights = {"distill": 1.0, "matching": 1.0, "reverse_matching": 0.0, "reconstruction": 1.0,
                             **(loss_weights or {})}
        self.logit_scale, self.test_topk_classes = logit_scale, test_topk_classes
        self.background_threshold, self.background_cap = background_threshold, background_cap
        if group_naming not in NAMING_MODES:
            raise ValueError(f"MODEL.ZEROSEG.GROUP_NAMING {group_naming!r} is not one of {NAMING_MODES}.")
        self.group_naming, self.teacher_naming_size = group_naming, teacher_naming_size

    @classmethod
    def from_config(cls, cfg) -> Dict:
        kwargs = cls.base_config(cfg, train_vocabulary=False)
        z = cfg.MODEL.ZEROSEG
        kwargs.update(
            encoder=MaskedViTEncoder(z.IMAGE_SIZE, z.PATCH_SIZE, z.ENCODER_DIM, z.ENCODER_DEPTH, z.ENCODER_HEADS),
            decoder=MAEDecoder(z.ENCODER_DIM, z.DECODER_DIM, z.DECODER_DEPTH, z.DECODER_HEADS, z.PATCH_SIZE,
                               z.IMAGE_SIZE),
            head=GroupingSegmentationHead(z.ENCODER_DIM, z.HEAD_DIM, z.HEAD_HEADS, z.HEAD_DEPTHS, z.NUM_GROUP_TOKENS,
                                          kwargs["clip"].embed_dim, projector_hidden=z.PROJECTOR_HIDDEN,
                                          gumbel=z.GUMBEL, global_layer=z.GLOBAL_LAYER, init=z.HEAD_INIT),
            image_size=z.IMAGE_SIZE, mask_ratio=z.MASK_RATIO, grids=z.GRIDS, norm_pix_loss=z.NORM_PIX_LOSS,
            loss_weights={"distill": z.DISTILL_WEIGHT, "matching": z.MATCHING_WEIGHT,
                          "reverse_matching": z.REVERSE_MATCHING_WEIGHT, "reconstruction": z.RECONSTRUCTION_WEIGHT},
            matching=z.MATCHING, teacher_view_size=z.TEACHER_VIEW_SIZE,
            logit_scale=z.LOGIT_SCALE, test_topk_classes=z.TEST_TOPK_CLASSES,
            background_threshold=z.BACKGROUND_THRESHOLD, background_cap=z.BACKGROUND_CAP,
            group_naming=z.GROUP_NAMING, teacher_naming_size=z.TEACHER_NAMING_SIZE,
            distill_grids=z.DISTILL_GRIDS, l1_distance=z.L1_DISTANCE, test_mode=z.TEST_MODE,
            test_crop_size=z.TEST_CROP_SIZE, test_stride=z.TEST_STRIDE,
        )
        return kwargs

    @property
    def patch_size(self) -> int:
        return self.encoder.patch_size

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            return self.losses(batched_inputs)
        text, foreground, background, num_classes = self.named_classes()
        image_scores = partial(self.image_scores, text=text, foreground=foreground, background=background,
                               num_classes=num_classes)
        scores = []
        for x in batched_inputs:
            image = x["image"].to(self.device)
            if self.test_mode == "slide":
                scores.append(sliding_window_scores(image, self.test_crop_size, self.test_stride, image_scores))
            else:
                scores.append(image_scores(image))
        return self.output_probs(scores, batched_inputs)

    # ---- training --------------------------------------------------------------------------------
    def teacher_features(self, batched_inputs: List[Dict], images: torch.Tensor) -> torch.Tensor:
        """(B, V, D) unit-norm teacher embeddings of the views: from the cache when the mapper
        attached them, else computed with the frozen CLIP."""
        if all("teacher_features" in x for x in batched_inputs):
            return torch.stack([x["teacher_features"] for x in batched_inputs]).to(self.device).float()
        return teacher_view_features(self.clip, images, self.grids, self.teacher_view_size)

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        images = self.normalize(torch.stack([x["image"] for x in batched_inputs]))
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"ZeroSeg trains on {self.image_size}x{self.image_size} inputs, got "
                             f"{tuple(images.shape[-2:])}: use INPUT.DATASET_MAPPER_NAME CenterCropImageMapper with "
                             f"INPUT.CENTER_CROP_SIZE {self.image_size}.")
        teacher = self.teacher_features(batched_inputs, images)
        return self.distillation_losses(images, teacher)

    def distillation_losses(self, images: torch.Tensor, teacher: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Losses for normalised images (B, 3, S, S) and their teacher view features (B, V, D): the
        views of DISTILL_GRIDS into z; the segments matched on the grid cells (no matching term when
        GRIDS has no grid but 1: nothing to match, Table 3's 1x1 row = Table 4's "Base"); the
        L1 terms x D with ``L1_DISTANCE`` "sum" (the distances are per-channel means)."""
        enc = self.encoder(images, self.mask_ratio)
        out = self.head(enc["tokens"])
        recon = self.decoder(enc["tokens"], enc["keep"], enc["grid"])
        w = self.loss_weights
        l1 = teacher.shape[-1] if self.l1_distance == "sum" else 1.0
        losses = {
            "loss_distill": w["distill"] * l1 * multiscale_distillation_loss(out["global"],
                                                                          teacher[:, self.distill_views]),
            "loss_reconstruction": w["reconstruction"] * masked_patch_mse(
                recon, images, enc["keep"], self.patch_size, self.norm_pix_loss),
        }
        if bool(self.local_views.any()):
            losses["loss_matching"] = w["matching"] * l1 * self.segment_matching(out, teacher, enc)
            if w["reverse_matching"]:
                losses["loss_reverse_matching"] = w["reverse_matching"] * l1 * reverse_matching_loss(
                    out["segments"], teacher[:, self.local_views])
        return losses

    def segment_matching(self, head_out: Dict, teacher: torch.Tensor, enc: Optional[Dict] = None) -> torch.Tensor:
        """Segment matching of the head's segments (B, G, D) against the grid-cell views of
        ``teacher`` (B, V, D), the whole-image view never being a match: to the nearest cell (the
        paper), one-to-one, or to the cells the segment's visible tokens cover (``enc``: the
        encoder's ``keep`` (B, K) and ``grid``; ``head_out`` then needs the ``assignments``)."""
        segments, local = head_out["segments"], teacher[:, self.local_views]
        if self.matching == "nearest":
            return segment_matching_loss(segments, local)
        if self.matching == "one_to_one":
            return one_to_one_matching_loss(segments, local)
        assignment = compose_assignments([a["hard"] for a in head_out["assignments"]])  # (B, G, K)
        overlap = token_cell_overlap(enc["grid"], self.patch_size, self.grids).to(segments.device)  # (V', L)
        return coverage_matching_loss(segments, assignment, local, overlap[:, enc["keep"]].transpose(0, 1))

    # ---- inference -------------------------------------------------------------------------------
    def segment(self, image: torch.Tensor) -> Dict[str, torch.Tensor]:
        """One normalised image (3, H, W), H and W multiples of the patch size -> ``segments``
        (G, D), ``global`` (D) and ``groups`` (H, W) int64: the final group of every pixel."""
        enc = self.encoder(image[None], 0.0)
        out = self.head(enc["tokens"])
        assignment = compose_assignments([a["soft"] for a in out["assignments"]])  # (1, G, L)
        groups = assignment_to_pixels(assignment, enc["grid"], image.shape[-2:])[0]
        return {"segments": out["segments"][0], "global": out["global"][0], "groups": groups}

    def segment_input(self, x: Dict) -> Dict:
        """:meth:`segment` of one detectron2 input dict (``image`` (3, H, W) uint8): normalised and
        padded to the patch size; ``groups`` is cropped back to (H, W), ``padded_groups`` keeps
        the padded (Hp, Wp) map and ``naming`` (G, D) the embeddings that name the groups (``GROUP_NAMING``)."""
        return self.segment_image(x["image"])

    def segment_image(self, image: torch.Tensor) -> Dict:
        """:meth:`segment_input` of an image (3, H, W) uint8 (or float in 0..255)."""
        image = ImageList.from_tensors([self.normalize(image)], self.patch_size)
        seg = self.segment(image.tensor[0])
        seg["naming"] = seg["segments"]
        if self.group_naming == "teacher":
            seg["naming"] = self.teacher_group_embeddings(image.tensor[0], seg["groups"], len(seg["segments"]))
        h, w = image.image_sizes[0]
        return {**seg, "padded_groups": seg["groups"], "groups": seg["groups"][:h, :w], "image_size": (h, w)}

    @torch.no_grad()
    def teacher_group_embeddings(self, image: torch.Tensor, groups: torch.Tensor, num_groups: int) -> torch.Tensor:
        """(G, D) the teacher's dense embedding of a normalised image (3, H, W) averaged over the
        pixels of each group of ``groups`` (H, W) (a group without pixels: zeros)."""
        x = image[None]
        if self.teacher_naming_size:
            scale = self.teacher_naming_size / min(x.shape[-2:])
            x = F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
        dense = self.clip.dense_embedding(self.clip.forward_features(x))  # (1, D, h, w)
        dense = F.interpolate(dense, size=groups.shape, mode="bilinear", align_corners=False)[0].flatten(1)
        onehot = F.one_hot(groups.flatten(), num_groups).to(dense.dtype)  # (H * W, G)
        return (dense @ onehot / onehot.sum(0).clamp(min=1)).T

    def group_class_scores(self, segments: torch.Tensor, global_embedding: torch.Tensor,
                           text: torch.Tensor) -> torch.Tensor:
        """(G, N) class probabilities of each group: softmax(scale * cosine) over the N classes, and
        (GroupViT's rule, ``test_topk_classes`` > 0) renormalised over the image's k most likely
        classes by z, then multiplied by the unrestricted probability (GroupViT's
        ``GroupViTSegInference.encode_decode``)."""
        text = F.normalize(text, dim=-1)
        logits = self.logit_scale * F.normalize(segments, dim=-1) @ text.T
        probs = logits.softmax(-1)
        k = self.test_topk_classes
        if 0 < k < text.shape[0]:
            image_logits = self.logit_scale * F.normalize(global_embedding, dim=-1) @ text.T
            allowed = torch.zeros_like(image_logits, dtype=torch.bool).scatter_(0, image_logits.topk(k).indices, True)
            probs = logits.masked_fill(~allowed, float("-inf")).softmax(-1) * probs
        return probs

    def named_classes(self) -> Tuple[torch.Tensor, List[int], List[int], int]:
        """The vocabulary split for inference: ``text`` (N_fg, D) template-averaged embeddings of
        the foreground classes, their indices, the index of the ``background`` class (a list of at
        most one; later background entries score 0) and the number of classes N."""
        names = self.vocabulary
        background = [i for i, n in enumerate(names) if is_background(n)]
        foreground = [i for i in range(len(names)) if i not in background]
        if not foreground:
            raise ValueError(f"The vocabulary {names} has no class besides {BACKGROUND!r}.")
        text = self.class_embeddings([names[i] for i in foreground]).mean(dim=1)  # (N_fg, D) over templates
        return text, foreground, background[:1], len(names)

    def image_scores(self, image: torch.Tensor, text: torch.Tensor, foreground: List[int], background: List[int],
                     num_classes: int) -> torch.Tensor:
        """(N, H, W) scores of an image (3, H, W) uint8, segmented and named on its own: the
        probabilities of its group (``foreground`` classes, ``text`` (N_fg, D)); the ``background``
        class (at most one index) 1 where the best of them is below the threshold, else 0."""
        seg = self.segment_image(image)
        probs = self.group_class_scores(seg["naming"], seg["global"], text)  # (G, N_fg)
        h, w = seg["image_size"]
        pixel = probs[seg["groups"]].permute(2, 0, 1)  # (N_fg, H, W)
        scores = pixel.new_zeros(num_classes, h, w)
        scores[foreground] = pixel
        if background:
            threshold = float(self.background_threshold)
            if self.background_cap:  # GroupViT: never more than the image's best group probability
                threshold = min(threshold, float(probs.max()))
            scores[background[0]] = (pixel.max(dim=0).values < threshold).to(scores.dtype)
        return scores
