"""Config keys ovss-d2 adds to detectron2's defaults.

:func:`add_ovss_config` adds them all: the shared part (:func:`add_shared_config`: CLIP, text
embeddings, model-wide switches, speed, data, test, solver) and one ``add_<method>_config`` per method
(:data:`METHOD_CONFIGS`), which adds only its own nodes: ``MODEL.<METHOD>`` and the input keys of the
method's mapper."""
from typing import Callable, Dict

from detectron2.config import CfgNode as CN


def add_clip_config(cfg: CN) -> None:
    """Shared: the open_clip model (``MODEL.CLIP``) and the text embeddings of the vocabulary
    (``MODEL.TEXT``)."""
    cfg.MODEL.CLIP = CN()
    # open_clip model name, e.g. "ViT-B-16", "convnext_base_w_320", "convnext_large_d_320".
    cfg.MODEL.CLIP.NAME = "ViT-B-16"
    # An open_clip pretrained tag ("openai", "laion2b_s29b_b131k_ft_soup", ...), a path to a local
    # checkpoint file (open_clip or original OpenAI layout), or "none" for random weights.
    cfg.MODEL.CLIP.PRETRAINED = "none"
    # Use QuickGELU activations (OpenAI weights need them; set automatically for OpenAI checkpoints
    # and for tags that were trained with them).
    cfg.MODEL.CLIP.QUICK_GELU = False
    # Where open_clip looks for / stores downloaded weights ("" = open_clip's default).
    cfg.MODEL.CLIP.CACHE_DIR = ""
    # Which towers are trained. Frozen towers get requires_grad=False.
    cfg.MODEL.CLIP.FREEZE_IMAGE = True
    cfg.MODEL.CLIP.FREEZE_TEXT = True
    # Input normalisation (R, G, B in 0..255 units); empty = the CLIP model's own statistics.
    cfg.MODEL.CLIP.PIXEL_MEAN = []
    cfg.MODEL.CLIP.PIXEL_STD = []
    # Stochastic depth rate and head dropout of a timm (ConvNeXt) image tower; -1 = open_clip's config.
    cfg.MODEL.CLIP.DROP_PATH_RATE = -1.0
    cfg.MODEL.CLIP.HEAD_DROPOUT = -1.0

    # Text embeddings of the vocabulary.
    cfg.MODEL.TEXT = CN()
    # A built-in template set (see ovss_d2/modeling/clip/templates.py): "imagenet_80",
    # "single_scene" (ERR-Seg), "photo_of_a" (ViL-Seg), "photo_of_the" (ZeroSeg).
    cfg.MODEL.TEXT.TEMPLATES = "imagenet_80"
    # A user template list; replaces TEMPLATES when non-empty. Each item contains "{}".
    cfg.MODEL.TEXT.CUSTOM_TEMPLATES = []
    # On-disk embedding cache: "" = $OVSS_D2_CACHE/text_embeddings (default ~/.cache/ovss_d2),
    # "none" = memory only.
    cfg.MODEL.TEXT.CACHE_DIR = ""
    # Prompts per text-encoder forward.
    cfg.MODEL.TEXT.BATCH_SIZE = 256
    # Class names with synonyms ("person, people"): "average" the synonyms' embeddings, or use
    # the "first" synonym only (what ERR-Seg's official code does).
    cfg.MODEL.TEXT.SYNONYMS = "average"


def _add_model_config(cfg: CN) -> None:
    """Shared ``MODEL`` switches: DDP, strict weight loading, ignore label, padding."""
    # DDP: set True for models with parameters that some steps do not use.
    cfg.MODEL.FIND_UNUSED_PARAMETERS = False
    # MODEL.WEIGHTS (and the Predictor's / demo's weights) must set exactly the model's tensors:
    # a checkpoint of another method or config is an error. False loads what fits and warns (to
    # fine-tune from another model); the CLIP weights of MODEL.CLIP.PRETRAINED are then loaded too.
    cfg.MODEL.WEIGHTS_STRICT = True

    # Ignore label of the ground truth (255 by convention).
    cfg.MODEL.SEM_SEG_IGNORE_VALUE = 255
    # Images are padded to a multiple of this (the backbone's largest stride).
    cfg.MODEL.SIZE_DIVISIBILITY = 32


def _add_speed_config(cfg: CN) -> None:
    """Shared speed switches (docs/performance.md): ``TEST.AMP``, ``MODEL.CHANNELS_LAST``, ``MODEL.COMPILE``,
    ``TEST.CLASS_CHUNK_SIZE``. All off = the plain fp32 path."""
    # Mixed precision at inference (training: SOLVER.AMP): autocast the forward in "bfloat16"
    # (CPU or CUDA) or "float16" (CUDA only).
    cfg.TEST.AMP = CN()
    cfg.TEST.AMP.ENABLED = False
    cfg.TEST.AMP.DTYPE = "bfloat16"
    # Convolution weights and images in channels-last (NHWC) memory order (faster convolutions
    # with oneDNN / cuDNN, above all with AMP); training and inference.
    cfg.MODEL.CHANNELS_LAST = False
    # torch.compile the image encoder's stages and the decoder's layers (skipped with a warning
    # where torch.compile cannot run, e.g. inductor without a C++ compiler on the CPU).
    cfg.MODEL.COMPILE = CN()
    cfg.MODEL.COMPILE.ENABLED = False
    cfg.MODEL.COMPILE.BACKEND = "inductor"
    # torch.compile mode: "" (default), "max-autotune", "reduce-overhead", ...
    cfg.MODEL.COMPILE.MODE = ""
    # Classes per chunk in the decoder's per-class layers at inference (0 = all classes at once):
    # bounds the peak memory at large vocabularies, same outputs.
    cfg.TEST.CLASS_CHUNK_SIZE = 0


def _add_data_config(cfg: CN) -> None:
    """Shared ``INPUT`` keys of the training mapper and ``TEST.DATASET_SETTINGS``."""
    # Training mapper, by class name in ovss_d2.data.DATASET_MAPPER_REGISTRY (test: SemSegDatasetMapper).
    cfg.INPUT.DATASET_MAPPER_NAME = "SemSegDatasetMapper"
    cfg.INPUT.FORMAT = "RGB"
    # Training crops that keep no single category above this fraction of the crop (1.0 = off).
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # detectron2's ColorAugSSDTransform (detectron2.projects.point_rend) in training, as the SED /
    # ERR-Seg / CAT-Seg mappers: brightness, contrast, saturation, hue +-18 of OpenCV's 0-180 units.
    cfg.INPUT.COLOR_AUG_SSD = False
    # The mapper pads training images (value 128) and labels (ignore) to a multiple of this.
    cfg.INPUT.SIZE_DIVISIBILITY = -1

    # Apply each test dataset's registered per-benchmark settings (ERR-Seg's CRM N, ZeroSeg's
    # background threshold) in place of the MODEL values while evaluating on it.
    cfg.TEST.DATASET_SETTINGS = True


def _add_solver_config(cfg: CN) -> None:
    """Shared ``SOLVER`` keys and the seed."""
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # or "SGD"
    # Learning-rate factor of every trainable CLIP weight (SED / ERR-Seg: 0.01).
    cfg.SOLVER.CLIP_LR_MULTIPLIER = 0.01
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # Which parameters skip weight decay: "norm_embed" (norm layers: WEIGHT_DECAY_NORM, embeddings:
    # WEIGHT_DECAY_EMBED) or "mae" (MAE's and GroupViT's rule: every 1-D tensor and every bias, no decay).
    cfg.SOLVER.WEIGHT_DECAY_RULE = "norm_embed"
    # Minimum of WarmupHalfCosineLR (ovss_d2/engine/lr_scheduler.py) as a factor of the base rate (MAE: 0).
    cfg.SOLVER.HALF_COSINE_MIN_FACTOR = 0.0
    # AMP dtype: "float16" (CUDA, with a gradient scaler) or "bfloat16" (CUDA or CPU).
    cfg.SOLVER.AMP.DTYPE = "float16"
    # Adam / AdamW betas (ZeroSeg: 0.9, 0.95).
    cfg.SOLVER.BETAS = (0.9, 0.999)

    # Deterministic by default: the sampler, the augmentations and the model's random draws are
    # seeded per sample / per iteration from SEED, so a resumed run replays the same stream.
    cfg.SEED = 42


def add_shared_config(cfg: CN) -> None:
    """Every key that is not one method's own (detectron2 ``get_cfg()`` node, in place)."""
    add_clip_config(cfg)
    _add_model_config(cfg)
    _add_speed_config(cfg)
    _add_data_config(cfg)
    _add_solver_config(cfg)


def add_clip_baseline_config(cfg: CN) -> None:
    """The training-free CLIP dense baseline, MaskCLIP-style (``MODEL.CLIP_BASELINE``)."""
    cfg.MODEL.CLIP_BASELINE = CN()
    # Initial logit scale (1 / temperature) applied to the cosine cost map.
    cfg.MODEL.CLIP_BASELINE.LOGIT_SCALE = 100.0
    cfg.MODEL.CLIP_BASELINE.LEARN_LOGIT_SCALE = False


def add_sed_config(cfg: CN) -> None:
    """SED (``MODEL.SED``)."""
    cfg.MODEL.SED = CN()
    # Every image is resized to this size before the encoder (official: 768 x 768).
    cfg.MODEL.SED.CLIP_RESOLUTION = (768, 768)
    cfg.MODEL.SED.HIDDEN_DIM = 128
    cfg.MODEL.SED.DECODER_DIMS = [64, 32, 16]
    cfg.MODEL.SED.GUIDANCE_PROJ_DIMS = [32, 16, 8]
    cfg.MODEL.SED.KERNEL_SIZES = [9, 9, 9]
    cfg.MODEL.SED.NUM_HEADS = 4
    cfg.MODEL.SED.POOLING_SIZE = (2, 2)
    # Class-attention pooling at inference; empty = POOLING_SIZE (the authors' eval.sh: 1 x 1).
    cfg.MODEL.SED.TEST_POOLING_SIZE = ()
    # Category early rejection at inference: each layer passes on the union of every pixel's
    # top-k classes (paper: k = 8). 0 disables it.
    cfg.MODEL.SED.EARLY_REJECTION_TOPK = 8


def add_err_seg_config(cfg: CN) -> None:
    """ERR-Seg (``MODEL.ERR_SEG``)."""
    cfg.MODEL.ERR_SEG = CN()
    # Images are resized to these sizes for training and inference (B: 640/640, L: 640/768).
    cfg.MODEL.ERR_SEG.CLIP_RESOLUTION = (640, 640)
    cfg.MODEL.ERR_SEG.TEST_RESOLUTION = (640, 640)
    # CRM: classes kept per image in training (GT always kept) and at inference (per benchmark:
    # 32 A-150, 48 A-847 / PC-459, 24 PC-59, 16 PAS-20); 0 keeps every class.
    cfg.MODEL.ERR_SEG.CRM_TRAIN = 32
    cfg.MODEL.ERR_SEG.CRM_TEST = 32
    cfg.MODEL.ERR_SEG.COST_DIM = 256
    cfg.MODEL.ERR_SEG.FUSION_DIM = 128
    cfg.MODEL.ERR_SEG.NUM_LAYERS = 4
    cfg.MODEL.ERR_SEG.SR_RATIOS = [2, 2, 2, 2]
    cfg.MODEL.ERR_SEG.NUM_HEADS = 4
    cfg.MODEL.ERR_SEG.DECODER_DIMS = [64, 32, 16]
    cfg.MODEL.ERR_SEG.GUIDANCE_PROJ_DIMS = [32, 16, 8]
    # Which CLIP weights train: "weight" (the authors' selection: layer scales and the weights of
    # the MLPs and depth-wise convs of the image tower; attention in-projections and first MLP
    # layers of the text transformer) or "full".
    cfg.MODEL.ERR_SEG.CLIP_FINETUNE = "weight"


def add_zeroseg_config(cfg: CN) -> None:
    """ZeroSeg (``MODEL.ZEROSEG``) and its centre-crop mapper (``INPUT.CENTER_CROP_SIZE``)."""
    # MODEL.CLIP is the frozen teacher (paper: ViT-L-14) and, at inference, the text encoder.
    cfg.MODEL.ZEROSEG = CN()
    cfg.MODEL.ZEROSEG.IMAGE_SIZE = 224  # training input; the grid views are resized to it too
    cfg.MODEL.ZEROSEG.PATCH_SIZE = 16
    cfg.MODEL.ZEROSEG.ENCODER_DIM = 768
    cfg.MODEL.ZEROSEG.ENCODER_DEPTH = 12
    cfg.MODEL.ZEROSEG.ENCODER_HEADS = 12
    # Fraction of the patches hidden from the encoder in training (paper: 0.6, the encoder sees 40%).
    cfg.MODEL.ZEROSEG.MASK_RATIO = 0.6
    # MAE reconstruction decoder.
    cfg.MODEL.ZEROSEG.DECODER_DIM = 512
    cfg.MODEL.ZEROSEG.DECODER_DEPTH = 8
    cfg.MODEL.ZEROSEG.DECODER_HEADS = 16
    cfg.MODEL.ZEROSEG.NORM_PIX_LOSS = True
    # Segmentation head: layers per stage (grouping after each but the last) and group tokens.
    cfg.MODEL.ZEROSEG.HEAD_DIM = 512
    cfg.MODEL.ZEROSEG.HEAD_HEADS = 8
    cfg.MODEL.ZEROSEG.HEAD_DEPTHS = [2, 2, 1]
    cfg.MODEL.ZEROSEG.NUM_GROUP_TOKENS = [32, 8]
    cfg.MODEL.ZEROSEG.PROJECTOR_HIDDEN = 2048
    cfg.MODEL.ZEROSEG.GUMBEL = True
    # z from its own transformer layer over the final segments (True, ours: a 6th head layer) or, as
    # GroupViT pools its image embedding and as the supplement counts 5 layers (2 + 2 + 1), from the
    # average of the last layer's segment tokens (False).
    cfg.MODEL.ZEROSEG.GLOBAL_LAYER = True
    # Head initialisation: "groupvit" (GroupViT's: truncated-normal 0.02 linears) or "torch" (PyTorch's defaults).
    cfg.MODEL.ZEROSEG.HEAD_INIT = "groupvit"
    # Teacher views: the whole image (grid 1) and the cells of the 2x2, 3x3, 4x4 grids.
    cfg.MODEL.ZEROSEG.GRIDS = [1, 2, 3, 4]
    # Grids whose views are distilled into z ([] = all of GRIDS). Table 4's "Base + segment matching":
    # [1] (only the whole image into z) while the segments are matched on the cells of the other GRIDS.
    cfg.MODEL.ZEROSEG.DISTILL_GRIDS = []
    # L1 of the distillation and matching terms between unit-normalised embeddings: "mean" over the
    # channels (ours) or "sum" (the L1 distance ||a - b||_1, D times larger; docs/methods/zeroseg.md).
    cfg.MODEL.ZEROSEG.L1_DISTANCE = "mean"
    # Size the views are resized to for the teacher; 0 = IMAGE_SIZE (the paper: both 224, CLIP-L's input).
    cfg.MODEL.ZEROSEG.TEACHER_VIEW_SIZE = 0
    # Precomputed teacher features (tools/cache_teacher_features.py); "" = computed on the fly.
    cfg.MODEL.ZEROSEG.TEACHER_CACHE = ""
    cfg.MODEL.ZEROSEG.DISTILL_WEIGHT = 1.0
    cfg.MODEL.ZEROSEG.MATCHING_WEIGHT = 1.0
    cfg.MODEL.ZEROSEG.RECONSTRUCTION_WEIGHT = 1.0
    # Segment matching: "nearest" (the paper's Eq. 1) or, not in the paper (docs/methods/zeroseg.md),
    # "one_to_one" (Hungarian) or "coverage" (each token's segment to the cells covering that token).
    cfg.MODEL.ZEROSEG.MATCHING = "nearest"
    # Not in the paper: weight of the reverse matching term (each cell to its nearest segment); 0 = off.
    cfg.MODEL.ZEROSEG.REVERSE_MATCHING_WEIGHT = 0.0
    # Inference: group-class scores = softmax(LOGIT_SCALE * cosine); the classes of a group are
    # limited to the TEST_TOPK_CLASSES best classes of the global embedding (GroupViT; 0 = off);
    # a "background" class in the vocabulary wins where the best score is below the threshold
    # (paper: 0.95 VOC, 0.05 PASCAL Context, 0.35 COCO; datasets may set it, TEST.DATASET_SETTINGS).
    cfg.MODEL.ZEROSEG.LOGIT_SCALE = 100.0
    cfg.MODEL.ZEROSEG.TEST_TOPK_CLASSES = 5
    cfg.MODEL.ZEROSEG.BACKGROUND_THRESHOLD = 0.95
    # GroupViT's rule: the threshold is capped by the image's best group probability (False: plain threshold).
    cfg.MODEL.ZEROSEG.BACKGROUND_CAP = True
    # What names a group at inference: "segment" (the paper: its segment embedding) or, not in the
    # paper (docs/methods/zeroseg.md), "teacher": the teacher's dense embedding averaged over the group's
    # pixels, the teacher run on the image resized to TEACHER_NAMING_SIZE on its short side (0: as is).
    cfg.MODEL.ZEROSEG.GROUP_NAMING = "segment"
    cfg.MODEL.ZEROSEG.TEACHER_NAMING_SIZE = 0
    # "whole" (one forward over the test image) or "slide": GroupViT's protocol, windows of
    # TEST_CROP_SIZE at TEST_STRIDE (paper configs: 448 / 224), each window segmented and named on its
    # own (top-k rule and background threshold inside the window), scores averaged where they overlap.
    cfg.MODEL.ZEROSEG.TEST_MODE = "whole"
    cfg.MODEL.ZEROSEG.TEST_CROP_SIZE = 448
    cfg.MODEL.ZEROSEG.TEST_STRIDE = 224
    # Unlabeled-image mapper (CenterCropImageMapper): shortest edge resized to this, centre crop.
    cfg.INPUT.CENTER_CROP_SIZE = 224


def add_vil_seg_config(cfg: CN) -> None:
    """ViL-Seg, trained on image-caption pairs (docs/methods/vil_seg.md): ``MODEL.VIL_SEG`` and its multi-crop mapper
    (``INPUT.VIL_SEG``)."""
    cfg.MODEL.VIL_SEG = CN()
    # Online clustering head: C clusters (paper: 25).
    cfg.MODEL.VIL_SEG.NUM_CLUSTERS = 25
    # Vision contrast: Phi_a = linear to this size + softmax (paper: 2048). VISION_CONTRAST "eq2": the
    # paper's Eq. 2 (one Phi_a, plain softmax, the global view's distribution as the target, no
    # gradient through it); "dino": DINO's recipe (not the paper's): EMA teacher of the encoder and
    # Phi_a (momentum TEACHER_MOMENTUM -> 1, cosine), centring (CENTER_MOMENTUM) and sharpening
    # (TEACHER_TEMP / STUDENT_TEMP). The three temperatures / momenta below are DINO's defaults and
    # are used only by "dino".
    cfg.MODEL.VIL_SEG.PROJECTION_DIM = 2048
    cfg.MODEL.VIL_SEG.VISION_CONTRAST = "eq2"
    cfg.MODEL.VIL_SEG.TEACHER_MOMENTUM = 0.996
    cfg.MODEL.VIL_SEG.TEACHER_TEMP = 0.04
    cfg.MODEL.VIL_SEG.STUDENT_TEMP = 0.1
    cfg.MODEL.VIL_SEG.CENTER_MOMENTUM = 0.9
    # Cross-modal InfoNCE: initial temperature, learnt or fixed; SYMMETRIC adds caption->image (CLIP).
    cfg.MODEL.VIL_SEG.TEMPERATURE = 0.07
    cfg.MODEL.VIL_SEG.LEARN_TEMPERATURE = True
    cfg.MODEL.VIL_SEG.SYMMETRIC_CROSS_LOSS = False
    # Global image embedding: "avg" = mean of the per-pixel embeddings (so a cluster's average is the
    # same pooling restricted to it) or "cls" = CLIP's class token.
    cfg.MODEL.VIL_SEG.GLOBAL_POOL = "avg"
    # Loss weights of Eq. 1 (vision contrast, cross-modal contrast, clustering).
    cfg.MODEL.VIL_SEG.VISION_LOSS_WEIGHT = 1.0
    cfg.MODEL.VIL_SEG.CROSS_LOSS_WEIGHT = 1.0
    cfg.MODEL.VIL_SEG.CLUSTER_LOSS_WEIGHT = 1.0
    # Let the IIC loss train the image encoder too. False: Eq. 1 as written (L_cluster optimised
    # w.r.t. the head Phi_c only); True: the other reading (Sec. 4.3: the head "can learn to improve
    # the quality of visual embeddings").
    cfg.MODEL.VIL_SEG.CLUSTER_GRAD_TO_ENCODER = False
    # Self-training fine-tuning (tools/vil_seg_self_train.py): train on pseudo-labelled segmentation
    # data (DATASETS.TRAIN, SemSegDatasetMapper) with per-pixel cross-entropy instead of the caption losses.
    cfg.MODEL.VIL_SEG.SELF_TRAINING = False
    # Clustering: "head" (online clustering head) or "kmeans" (the paper's offline ablation, Table 2's
    # 86.19M model: no head is built and no L_cluster trained; per-image K-means with NUM_CLUSTERS
    # clusters on the normalised pixel embeddings at inference).
    cfg.MODEL.VIL_SEG.CLUSTERING = "head"
    cfg.MODEL.VIL_SEG.KMEANS_ITERS = 30
    # Training views (INPUT.DATASET_MAPPER_NAME "MultiCropCaptionMapper"). Defaults: DINO's crop scales;
    # the paper configs set SwAV's local scale (0.05, 0.14), the paper's multi-crop reference [3].
    cfg.INPUT.VIL_SEG = CN()
    cfg.INPUT.VIL_SEG.GLOBAL_SIZE = 224
    cfg.INPUT.VIL_SEG.GLOBAL_SCALE = (0.4, 1.0)
    cfg.INPUT.VIL_SEG.NUM_LOCAL = 6
    cfg.INPUT.VIL_SEG.LOCAL_SIZE = 96
    cfg.INPUT.VIL_SEG.LOCAL_SCALE = (0.05, 0.4)
    # IIC's transformed copy: colour x U(1 -+ MULT) + U(-+ ADD) * 255 per channel, flip probability.
    cfg.INPUT.VIL_SEG.IIC_COLOR_MULT = 0.2
    cfg.INPUT.VIL_SEG.IIC_COLOR_ADD = 0.1
    cfg.INPUT.VIL_SEG.IIC_FLIP_PROB = 0.5


# Each method's config function by the node it adds under MODEL.
METHOD_CONFIGS: Dict[str, Callable[[CN], None]] = {
    "CLIP_BASELINE": add_clip_baseline_config,
    "SED": add_sed_config,
    "ERR_SEG": add_err_seg_config,
    "ZEROSEG": add_zeroseg_config,
    "VIL_SEG": add_vil_seg_config,
}


def add_ovss_config(cfg: CN) -> None:
    """Add every key the project uses to ``cfg`` (a detectron2 ``get_cfg()`` node), in place: the shared
    part, then each method's."""
    add_shared_config(cfg)
    for add_method_config in METHOD_CONFIGS.values():
        add_method_config(cfg)
