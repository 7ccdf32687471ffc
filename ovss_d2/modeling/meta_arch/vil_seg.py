"""ViL-Seg (Liu et al., ECCV 2022): open-world segmentation learnt from image-caption pairs only.

Training (one batch of the ``MultiCropCaptionMapper``, see
:mod:`ovss_d2.data.image_caption_mapper`): a CLIP ViT image encoder and text encoder with

* ``loss_vision``: the multi-crop vision contrast between the global view and 6 local views
  through a linear projection + softmax (:class:`~ovss_d2.modeling.contrastive.MultiCropDistillation`):
  Eq. 2 as written (``VISION_CONTRAST eq2``) or DINO's recipe (``dino``: an EMA teacher encoder and
  projection give the target, centred and sharpened);
* ``loss_cross``: InfoNCE between the global view and its caption, negatives from every rank
  (:func:`~ovss_d2.modeling.contrastive.cross_modal_info_nce`);
* ``loss_cluster``: IIC's mutual information between the online clustering head's assignments of
  the global view and of its colour-jittered, flipped copy mapped back pixel to pixel
  (:mod:`ovss_d2.modeling.clustering`), w.r.t. the head only as Eq. 1 writes it
  (``CLUSTER_GRAD_TO_ENCODER False``) or also the encoder. With ``CLUSTERING kmeans`` (Table 2's
  offline row) there is no head and no ``loss_cluster``.

Self-training fine-tuning (``SELF_TRAINING True``, :mod:`ovss_d2.modeling.self_training`): inputs
are pseudo-labelled images (``sem_seg``); the only loss is ``loss_self_training``, the per-pixel
cross-entropy of the patch embeddings' cosine logits against the class text embeddings.

Inference: per-pixel (per-patch) embeddings -> argmax cluster of the head (or per-image K-means,
``MODEL.VIL_SEG.CLUSTERING kmeans``) -> each cluster's average embedding -> named by its nearest
class text embedding (``a photo of a {}.``). Outputs per-pixel class probabilities (those of the
pixel's cluster), resized to the requested output size.
"""
import copy
import math
from typing import Dict, List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY

from ..contrastive import MultiCropDistillation, cross_modal_info_nce, dino_teacher_momentum, ema_update_
from ..clustering import OnlineClusteringHead, cluster_average, iic_loss, kmeans, undo_hflip
from ..self_training import pixel_cross_entropy
from .base import OpenVocabSegmentor

GLOBAL_POOLS = ("avg", "cls")
CLUSTERINGS = ("head", "kmeans")
VISION_CONTRASTS = ("eq2", "dino")


@META_ARCH_REGISTRY.register()
class ViLSeg(OpenVocabSegmentor):
    """See the module docstring. Paper scale: ``ViT-B-16`` (embedding 512), ``num_clusters`` 25,
    ``projection_dim`` 2048."""

    @configurable
    def __init__(self, *, num_clusters: int = 25, projection_dim: int = 2048, teacher_temp: float = 0.04,
                 student_temp: float = 0.1, center_momentum: float = 0.9, temperature: float = 0.07,
                 learn_temperature: bool = True, symmetric_cross_loss: bool = False, global_pool: str = "avg",
                 loss_weights: Tuple[float, float, float] = (1.0, 1.0, 1.0), cluster_grad_to_encoder: bool = False,
                 clustering: str = "head", kmeans_iters: int = 30, vision_contrast: str = "eq2",
                 teacher_momentum: float = 0.996, max_iter: int = 1, self_training: bool = False, **kwargs):
        super().__init__(**kwargs)
        if self.clip.kind != "vit":
            raise ValueError(f"ViL-Seg's image encoder is a ViT: MODEL.CLIP.NAME={self.clip.name!r} is a "
                             f"{self.clip.kind}. Use ViT-B-16 (paper) or ovss-tiny-vit(-128).")
        if global_pool not in GLOBAL_POOLS:
            raise ValueError(f"MODEL.VIL_SEG.GLOBAL_POOL={global_pool!r}: use one of {GLOBAL_POOLS}.")
        if clustering not in CLUSTERINGS:
            raise ValueError(f"MODEL.VIL_SEG.CLUSTERING={clustering!r}: use one of {CLUSTERINGS}.")
        if vision_contrast not in VISION_CONTRASTS:
            raise ValueError(f"MODEL.VIL_SEG.VISION_CONTRAST={vision_contrast!r}: use one of {VISION_CONTRASTS}.")
        dim = self.clip.embed_dim
        self.num_clusters, self.global_pool, self.clustering = num_clusters, global_pool, clustering
        self.kmeans_iters = kmeans_iters
        self.symmetric_cross_loss, self.cluster_grad_to_encoder = symmetric_cross_loss, cluster_grad_to_encoder
        self.vision_weight, self.cross_weight, self.cluster_weight = (float(w) for w in loss_weights)
        self.self_training = self_training
        # Table 2's "Offline (K-means)" model (86.19M) has no clustering head: none is built
        self.cluster_head = OnlineClusteringHead(dim, num_clusters) if clustering == "head" else None
        # without the vision loss (the paper's "w/o L_vision" ablation) Phi_a is not built at all
        self.vision_contrast, self.dino = None, vision_contrast == "dino" and self.vision_weight > 0
        if self.vision_weight > 0:
            temps = (teacher_temp, student_temp) if self.dino else (1.0, 1.0)  # Eq. 2: plain softmax
            self.vision_contrast = MultiCropDistillation(dim, projection_dim, *temps, center_momentum,
                                                         centering=self.dino)
        if self.dino:  # DINO's EMA teacher: the image encoder and Phi_a, updated before each step
            self.teacher_visual = copy.deepcopy(self.clip.model.visual).requires_grad_(False)
            self.teacher_proj = copy.deepcopy(self.vision_contrast.proj).requires_grad_(False)
            self.register_buffer("teacher_step", torch.zeros((), dtype=torch.long))
            self.teacher_momentum, self.max_iter = teacher_momentum, max_iter
        log_scale = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)

    @classmethod
    def from_config(cls, cfg) -> Dict:
        c = cfg.MODEL.VIL_SEG
        # trained on captions: the training datasets have no class vocabulary (pseudo-labels have one)
        kwargs = cls.base_config(cfg, train_vocabulary=c.SELF_TRAINING)
        kwargs.update(
            num_clusters=c.NUM_CLUSTERS, projection_dim=c.PROJECTION_DIM, teacher_temp=c.TEACHER_TEMP,
            student_temp=c.STUDENT_TEMP, center_momentum=c.CENTER_MOMENTUM, temperature=c.TEMPERATURE,
            learn_temperature=c.LEARN_TEMPERATURE, symmetric_cross_loss=c.SYMMETRIC_CROSS_LOSS,
            global_pool=c.GLOBAL_POOL, cluster_grad_to_encoder=c.CLUSTER_GRAD_TO_ENCODER,
            loss_weights=(c.VISION_LOSS_WEIGHT, c.CROSS_LOSS_WEIGHT, c.CLUSTER_LOSS_WEIGHT),
            clustering=c.CLUSTERING, kmeans_iters=c.KMEANS_ITERS, vision_contrast=c.VISION_CONTRAST,
            teacher_momentum=c.TEACHER_MOMENTUM, max_iter=cfg.SOLVER.MAX_ITER, self_training=c.SELF_TRAINING,
        )
        return kwargs

    @property
    def logit_scale(self) -> torch.Tensor:
        """1 / temperature of the cross-modal contrast (clamped at 100 as CLIP does)."""
        return self.log_logit_scale.exp().clamp(max=100.0)

    # ---- embeddings ----------------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalised images (B, 3, H, W), sides multiples of the patch size ->
        ``e_pxl`` (B, D, H/p, W/p): every patch token after the last block, ``ln_post`` and the
        projection; ``e_v`` (B, D): their mean (GLOBAL_POOL avg) or the class token's (cls)."""
        visual = self.clip.model.visual
        feats = self.clip.forward_features(images)
        b, _, gh, gw = feats["res4"].shape
        tokens = visual.ln_post(feats["res4"].flatten(2).transpose(1, 2))  # (B, hw, C)
        if visual.proj is not None:
            tokens = tokens @ visual.proj
        pixel = tokens.transpose(1, 2).reshape(b, -1, gh, gw)
        if self.global_pool == "avg":
            glob = tokens.mean(dim=1)
        else:
            glob = visual.ln_post(feats["cls"])
            glob = glob @ visual.proj if visual.proj is not None else glob
        return pixel, glob

    def encode_captions(self, captions: List[str]) -> torch.Tensor:
        """(B, D) text embeddings of the captions (with gradients while training)."""
        return self.clip.encode_text(self.clip.tokenize(captions).to(self.device))

    # ---- training ------------------------------------------------------------------------------
    def train_keys(self) -> Tuple[str, ...]:
        """The inputs a caption-training step needs (the IIC copy only with a clustering head)."""
        keys = ("caption", "local_views") if self.vision_contrast is not None else ("caption",)
        return keys + (("iic_image", "iic_flipped") if self.cluster_head is not None else ())

    @torch.no_grad()
    def update_teacher(self) -> float:
        """DINO's EMA step on the teacher encoder and projection (before each training step, i.e.
        after the previous optimizer step; the first step copies the student). Returns the momentum."""
        step = int(self.teacher_step)
        m = 0.0 if step == 0 else dino_teacher_momentum(step, self.max_iter, self.teacher_momentum)
        ema_update_(self.teacher_visual, self.clip.model.visual, m)
        ema_update_(self.teacher_proj, self.vision_contrast.proj, m)
        self.teacher_step += 1
        return m

    @torch.no_grad()
    def teacher_embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, D) global embeddings of the EMA teacher encoder."""
        student = self.clip.model.visual
        self.clip.model.visual = self.teacher_visual  # same code path, the teacher's weights
        try:
            _, glob = self.embed(images)
        finally:
            self.clip.model.visual = student
        return glob

    def self_training_losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        """Fine-tuning on pseudo-labels: ``loss_self_training`` (:func:`pixel_cross_entropy`)."""
        if "sem_seg" not in batched_inputs[0]:
            raise ValueError("MODEL.VIL_SEG.SELF_TRAINING fine-tunes on pseudo-labelled images: DATASETS.TRAIN "
                             "must be a segmentation dataset (tools/vil_seg_self_train.py registers one) read by "
                             "INPUT.DATASET_MAPPER_NAME SemSegDatasetMapper.")
        images = self.preprocess_images(batched_inputs)
        targets = self.sem_seg_targets(batched_inputs, images)
        pixel, _ = self.embed(images.tensor)
        text = F.normalize(self.class_embeddings().mean(dim=1).float(), dim=-1)  # (N, D)
        return {"loss_self_training": pixel_cross_entropy(pixel, text, self.logit_scale, targets, self.ignore_value)}

    def losses(self, batched_inputs: List[Dict]) -> Dict[str, torch.Tensor]:
        if self.self_training:
            return self.self_training_losses(batched_inputs)
        missing = [k for k in self.train_keys() if k not in batched_inputs[0]]
        if missing:
            raise ValueError(
                f"ViL-Seg trains on image-caption pairs and needs {missing} in its inputs: set "
                "INPUT.DATASET_MAPPER_NAME MultiCropCaptionMapper and an image-caption dataset in "
                "DATASETS.TRAIN (e.g. toyworld_captions_train, cc12m_train).")
        b = len(batched_inputs)
        globals_ = torch.stack([x["image"] for x in batched_inputs])
        if self.cluster_head is not None:
            iic = torch.stack([x["iic_image"] for x in batched_inputs])
            flipped = torch.tensor([bool(x["iic_flipped"]) for x in batched_inputs])
            globals_ = torch.cat([globals_, iic])
        pixel, glob = self.embed(self.normalize(globals_))
        e_v = glob[:b]

        losses = {}
        e_t = self.encode_captions([x["caption"] for x in batched_inputs])
        losses["loss_cross"] = self.cross_weight * cross_modal_info_nce(e_v, e_t, self.logit_scale,
                                                                        self.symmetric_cross_loss)
        if self.vision_contrast is not None:
            local = torch.stack([x["local_views"] for x in batched_inputs])  # (B, V, 3, l, l)
            v = local.shape[1]
            if v == 0:
                raise ValueError("The vision contrast needs local views: INPUT.VIL_SEG.NUM_LOCAL > 0 (paper: 6), "
                                 "or MODEL.VIL_SEG.VISION_LOSS_WEIGHT 0.")
            _, e_local = self.embed(self.normalize(local.flatten(0, 1)))
            e_local = e_local.view(b, v, -1).transpose(0, 1)  # (V, B, D)
            if self.dino:
                self.update_teacher()
                target = self.teacher_embed(self.normalize(globals_[:b]))
                loss = self.vision_contrast(target, e_local, self.teacher_proj)
            else:
                loss = self.vision_contrast(e_v, e_local)
            losses["loss_vision"] = self.vision_weight * loss
        if self.cluster_head is not None:
            pixel, pixel_t = pixel[:b], pixel[b:]
            if not self.cluster_grad_to_encoder:  # Eq. 1: L_cluster is optimised w.r.t. Phi_c only
                pixel, pixel_t = pixel.detach(), pixel_t.detach()
            p = self.cluster_head(pixel)
            q = self.cluster_head(undo_hflip(pixel_t, flipped))
            losses["loss_cluster"] = self.cluster_weight * iic_loss(p, q)
        return losses

    # ---- inference -----------------------------------------------------------------------------
    def cluster(self, pixel: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) pixel embeddings -> (B, h, w) cluster ids: the head's argmax, or per-image
        K-means (seeded, deterministic) on the L2-normalised embeddings."""
        if self.clustering == "head":
            if self.cluster_head is None:
                raise ValueError("This ViL-Seg was built without a clustering head (MODEL.VIL_SEG.CLUSTERING kmeans): "
                                 "it can only cluster with K-means.")
            return self.cluster_head.assign(pixel)
        out = []
        for emb in pixel:
            x = F.normalize(emb.flatten(1).T.float(), dim=-1)
            g = torch.Generator().manual_seed(0)
            labels, _ = kmeans(x, self.num_clusters, self.kmeans_iters, generator=g)
            out.append(labels.view(emb.shape[1:]))
        return torch.stack(out)

    @torch.no_grad()
    def segment(self, images: torch.Tensor, text: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalised images (B, 3, H, W) and normalised class embeddings (N, D) ->
        (B, N, H/p, W/p) class probabilities of each patch's cluster and (B, H/p, W/p) clusters."""
        pixel, _ = self.embed(images)
        assignment = self.cluster(pixel)
        regions, _ = cluster_average(pixel.float(), assignment, self.num_clusters)  # (B, C, D)
        probs = (self.logit_scale * F.normalize(regions, dim=-1) @ text.T).softmax(dim=-1)  # (B, C, N)
        per_pixel = torch.gather(probs, 1, assignment.flatten(1).unsqueeze(-1).expand(-1, -1, probs.shape[-1]))
        b, h, w = assignment.shape
        return per_pixel.transpose(1, 2).reshape(b, -1, h, w), assignment

    def patch_aligned(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> resized so that each side is the nearest multiple of the patch size (at least one patch)."""
        p = self.clip.patch_size
        h, w = image.shape[-2:]
        return self.resize_to(image, (max(p, round(h / p) * p), max(p, round(w / p) * p)))

    def forward(self, batched_inputs: List[Dict]):
        if self.training:
            return self.losses(batched_inputs)
        text = F.normalize(self.class_embeddings().mean(dim=1).float(), dim=-1)  # template ensemble (N, D)
        images = [self.patch_aligned(self.normalize(x["image"])[None]) for x in batched_inputs]  # each (1, 3, h, w)
        probs = [self.segment(image, text)[0][0] for image in images]  # each (N, h/p, w/p)
        return self.output_probs(probs, batched_inputs)
