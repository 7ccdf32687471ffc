"""Config keys ovss-d2 adds to detectron2's defaults (``add_ovss_config``)."""
from detectron2.config import CfgNode as CN


def add_ovss_config(cfg: CN) -> None:
    """Add every key the project uses to ``cfg`` (a detectron2 ``get_cfg()`` node), in place."""
    # ---- CLIP (open_clip) ------------------------------------------------------------------
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

    # ---- Text embeddings of the vocabulary ---------------------------------------------------
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

    # ---- Training-free CLIP dense baseline (MaskCLIP-style) ----------------------------------
    cfg.MODEL.CLIP_BASELINE = CN()
    # Initial logit scale (1 / temperature) applied to the cosine cost map.
    cfg.MODEL.CLIP_BASELINE.LOGIT_SCALE = 100.0
    cfg.MODEL.CLIP_BASELINE.LEARN_LOGIT_SCALE = False

    # DDP: set True for models with parameters that some steps do not use.
    cfg.MODEL.FIND_UNUSED_PARAMETERS = False
    # ---- SED ----------------------------------------------------------------------------------
    cfg.MODEL.SED = CN()
    # Every image is resized to this size before the encoder (official: 768 x 768).
    cfg.MODEL.SED.CLIP_RESOLUTION = (768, 768)
    cfg.MODEL.SED.HIDDEN_DIM = 128
    cfg.MODEL.SED.DECODER_DIMS = [64, 32, 16]
    cfg.MODEL.SED.GUIDANCE_PROJ_DIMS = [32, 16, 8]
    cfg.MODEL.SED.KERNEL_SIZES = [9, 9, 9]
    cfg.MODEL.SED.NUM_HEADS = 4
    cfg.MODEL.SED.POOLING_SIZE = (2, 2)
    # Category early rejection at inference: each layer passes on the union of every pixel's
    # top-k classes (paper: k = 8). 0 disables it.
    cfg.MODEL.SED.EARLY_REJECTION_TOPK = 8

    # ---- ERR-Seg ------------------------------------------------------------------------------
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

    # Ignore label of the ground truth (255 by convention).
    cfg.MODEL.SEM_SEG_IGNORE_VALUE = 255
    # Images are padded to a multiple of this (the backbone's largest stride).
    cfg.MODEL.SIZE_DIVISIBILITY = 32

    # ---- Data ---------------------------------------------------------------------------------
    # Training mapper, by class name in ovss_d2.data.DATASET_MAPPER_REGISTRY (test: SemSegDatasetMapper).
    cfg.INPUT.DATASET_MAPPER_NAME = "SemSegDatasetMapper"
    cfg.INPUT.FORMAT = "RGB"
    # Training crops that keep no single category above this fraction of the crop (1.0 = off).
    cfg.INPUT.CROP.SINGLE_CATEGORY_MAX_AREA = 1.0
    # SSD-style photometric distortion (brightness, contrast, saturation, hue) in training.
    cfg.INPUT.COLOR_AUG_SSD = False
    # The mapper pads training images (value 128) and labels (ignore) to a multiple of this.
    cfg.INPUT.SIZE_DIVISIBILITY = -1

    # ---- Test ---------------------------------------------------------------------------------
    # Apply each test dataset's registered per-benchmark settings (ERR-Seg's CRM N, ZeroSeg's
    # background threshold) in place of the MODEL values while evaluating on it.
    cfg.TEST.DATASET_SETTINGS = True

    # ---- Solver -------------------------------------------------------------------------------
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # or "SGD"
    # Learning-rate factor of every trainable CLIP weight (SED / ERR-Seg: 0.01).
    cfg.SOLVER.CLIP_LR_MULTIPLIER = 0.01
    cfg.SOLVER.WEIGHT_DECAY_EMBED = 0.0
    # AMP dtype: "float16" (CUDA, with a gradient scaler) or "bfloat16" (CUDA or CPU).
    cfg.SOLVER.AMP.DTYPE = "float16"
    # Adam / AdamW betas (ZeroSeg: 0.9, 0.95).
    cfg.SOLVER.BETAS = (0.9, 0.999)

    # Deterministic by default: the sampler, the augmentations and the model's random draws are
    # seeded per sample / per iteration from SEED, so a resumed run replays the same stream.
    cfg.SEED = 42
