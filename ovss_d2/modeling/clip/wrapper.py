"""The CLIP wrapper every method builds on: one open_clip model, its weights (resolved by
:mod:`.weights`: a tag, a local file or nowhere), dense visual features per stage, and text embeddings."""
import hashlib
import logging
import re
from contextlib import contextmanager
from typing import Dict, Iterator, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import load_clip_state_dict, read_clip_checkpoint
from .weights import is_weights_tag, resolve_clip_weights

logger = logging.getLogger(__name__)


def _interpolate_pos_embed(pos: torch.Tensor, grid: Sequence[int], new_grid: Sequence[int]) -> torch.Tensor:
    """(1 + g*g, C) absolute position embedding -> (1 + h*w, C) by bicubic interpolation."""
    if tuple(grid) == tuple(new_grid):
        return pos
    cls_pos, patch_pos = pos[:1], pos[1:]
    c = patch_pos.shape[-1]
    patch_pos = patch_pos.reshape(1, grid[0], grid[1], c).permute(0, 3, 1, 2)
    patch_pos = F.interpolate(patch_pos, size=tuple(new_grid), mode="bicubic", align_corners=False)
    patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(-1, c)
    return torch.cat([cls_pos, patch_pos], dim=0)


def _normalisation(key: str, values: Optional[Sequence[float]]) -> Optional[List[float]]:
    """A configured MODEL.CLIP.PIXEL_MEAN / PIXEL_STD: None when unset (empty)."""
    if values is None or len(values) == 0:
        return None
    if len(values) != 3:
        raise ValueError(f"MODEL.CLIP.{key} must hold 3 values (R, G, B in 0..255 units) or be empty "
                         f"(the CLIP model's own statistics), got {list(values)}.")
    return [float(v) for v in values]


def _tower_overrides(name: str, drop_path: Optional[float], head_dropout: Optional[float]) -> Dict:
    """open_clip ``create_model`` keyword arguments replacing the image tower's stochastic depth
    (``timm_drop_path``) and head dropout (``timm_drop``); none when both are unset (negative)."""
    import open_clip

    settings = {"timm_drop_path": drop_path, "timm_drop": head_dropout}
    settings = {k: float(v) for k, v in settings.items() if v is not None and v >= 0}
    if not settings:
        return {}
    vision_cfg = dict(open_clip.get_model_config(name)["vision_cfg"])
    if "timm_model_name" not in vision_cfg:
        raise ValueError(f"MODEL.CLIP.DROP_PATH_RATE / HEAD_DROPOUT apply to timm image towers (ConvNeXt); "
                         f"{name} has none: leave them at -1.")
    vision_cfg.update(settings)
    return {"vision_cfg": vision_cfg}


# What open_clip's create_model logs (on the root logger) when it loads no weights: we build it so on
# purpose and load the weights ourselves, with a line of our own saying which.
RANDOM_INIT_MESSAGE = re.compile(r"No pretrained weights loaded for model '.*'\. Model initialized randomly\.")


@contextmanager
def _silenced(pattern: "re.Pattern", logger_: logging.Logger) -> Iterator[None]:
    """Drops the records of ``logger_`` whose message matches ``pattern`` within the block."""
    def keep(record: logging.LogRecord) -> bool:
        return not pattern.fullmatch(record.getMessage())

    logger_.addFilter(keep)
    try:
        yield
    finally:
        logger_.removeFilter(keep)


class CLIPWrapper(nn.Module):
    """An open_clip CLIP model with dense features.

    Args:
        name: open_clip model name (``ViT-B-16``, ``convnext_base_w_320``, ...).
        pretrained: an open_clip tag, a local checkpoint path, or ``"none"`` (random weights;
            the network is never touched).
        quick_gelu: build with QuickGELU (forced for OpenAI weights).
        cache_dir: open_clip download cache.
        pixel_mean, pixel_std: input normalisation in 0..255 units (3 values each); None or empty:
            the CLIP model's own statistics. (ERR-Seg's configs use ImageNet's.)
        drop_path, head_dropout: stochastic depth rate of a timm image tower and dropout of its
            head; None or negative: the open_clip model config's values. (The methods' authors
            build ConvNeXt-B without drop path; open_clip's config sets 0.1.)

    Attributes:
        kind: ``"vit"`` or ``"convnext"``.
        embed_dim: dimension D of the joint image-text space.
        stage_dims: channels of the dense features (ConvNeXt: res2..res5; ViT: [width]).
        pixel_mean, pixel_std: the input normalisation in 0..255 units (lists of 3).
    """

    def __init__(self, name: str, pretrained: str = "none", quick_gelu: bool = False,
                 cache_dir: Optional[str] = None, pixel_mean: Optional[Sequence[float]] = None,
                 pixel_std: Optional[Sequence[float]] = None, drop_path: Optional[float] = None,
                 head_dropout: Optional[float] = None):
        super().__init__()
        import open_clip

        if name not in open_clip.list_models():
            raise ValueError(
                f"MODEL.CLIP.NAME={name!r} is not an open_clip model. Known: see open_clip.list_models()."
            )
        pretrained = str(pretrained)
        path, tag_quick_gelu = resolve_clip_weights(name, pretrained, cache_dir)  # path None: no weights
        state_dict = None
        if path is not None:
            if is_weights_tag(pretrained):
                pretrained = path  # the file a registered tag (e.g. ``toyworld``) stands for
            state_dict, layout = read_clip_checkpoint(path)
            quick_gelu = quick_gelu or tag_quick_gelu or layout == "openai"
        with _silenced(RANDOM_INIT_MESSAGE, logging.getLogger()):  # built without weights on purpose
            self.model = open_clip.create_model(name, pretrained=None, force_quick_gelu=quick_gelu,
                                                **_tower_overrides(name, drop_path, head_dropout))
        if state_dict is not None:
            load_clip_state_dict(self.model, state_dict, path)
            logger.info(f"Loaded CLIP {name} weights from {path}")
        else:
            logger.info(f"CLIP {name} built with random weights (MODEL.CLIP.PRETRAINED=none)")
        self.model.float()
        self.name, self.pretrained, self.quick_gelu = name, pretrained, quick_gelu
        self.tokenizer = open_clip.get_tokenizer(name)

        visual = self.model.visual
        pre = getattr(visual, "preprocess_cfg", None) or {}
        mean = pre.get("mean", (0.48145466, 0.4578275, 0.40821073))
        std = pre.get("std", (0.26862954, 0.26130258, 0.27577711))
        self.pixel_mean = _normalisation("PIXEL_MEAN", pixel_mean) or [255.0 * m for m in mean]
        self.pixel_std = _normalisation("PIXEL_STD", pixel_std) or [255.0 * s for s in std]
        if min(self.pixel_std) <= 0:
            raise ValueError(f"MODEL.CLIP.PIXEL_STD must be positive, got {self.pixel_std}.")
        self.embed_dim = int(self.model.text_projection.shape[-1]) if hasattr(self.model, "text_projection") \
            and self.model.text_projection is not None else int(self.model.visual.output_dim)

        from open_clip.transformer import VisionTransformer

        if isinstance(visual, VisionTransformer):
            self.kind = "vit"
            self.patch_size = visual.patch_size[0]
            self.stage_dims = [visual.conv1.out_channels]
            self.strides = [self.patch_size]
        elif hasattr(visual, "trunk") and hasattr(visual.trunk, "stages") and hasattr(visual.trunk, "stem"):
            self.kind = "convnext"
            info = visual.trunk.feature_info[-len(visual.trunk.stages):]
            self.stage_dims = [int(f["num_chs"]) for f in info]
            self.strides = [int(f["reduction"]) for f in info]
        else:
            raise NotImplementedError(
                f"Dense features are implemented for open_clip ViTs and timm ConvNeXts; {name} is "
                f"{type(visual).__name__}."
            )
        self.text_forward_count = 0  # text-encoder forwards, for tests and benchmarks
        self._fingerprint_cache = (None, None)

    @classmethod
    def from_config(cls, cfg) -> "CLIPWrapper":
        c = cfg.MODEL.CLIP
        clip = cls(c.NAME, c.PRETRAINED, c.QUICK_GELU, c.CACHE_DIR or None, pixel_mean=c.PIXEL_MEAN,
                   pixel_std=c.PIXEL_STD, drop_path=c.DROP_PATH_RATE, head_dropout=c.HEAD_DROPOUT)
        clip.set_trainable(image=not cfg.MODEL.CLIP.FREEZE_IMAGE, text=not cfg.MODEL.CLIP.FREEZE_TEXT)
        return clip

    # ---- parameters ----------------------------------------------------------------------------
    def image_parameters(self):
        return [p for n, p in self.model.named_parameters() if n.startswith("visual.")]

    def text_named_tensors(self):
        """Every parameter and buffer of the text side (all but ``visual.*`` and ``logit_*``)."""
        named = list(self.model.named_parameters()) + list(self.model.named_buffers())
        return [(n, t) for n, t in named if not n.startswith(("visual.", "logit_"))]

    def set_trainable(self, image: bool, text: bool) -> None:
        for n, p in self.model.named_parameters():
            if n.startswith("visual."):
                p.requires_grad_(image)
            else:
                p.requires_grad_(text and not n.startswith("logit_"))

    def text_fingerprint(self) -> str:
        """A hash of the text tower's weights. Recomputed only when a weight was modified in
        place (loading a checkpoint, an optimizer step), which torch's version counters reveal."""
        named = self.text_named_tensors()
        versions = tuple((n, t.data_ptr(), t._version) for n, t in named)
        if self._fingerprint_cache[0] != versions:
            h = hashlib.sha1()
            for n, t in sorted(named, key=lambda x: x[0]):
                h.update(n.encode())
                h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
            self._fingerprint_cache = (versions, h.hexdigest())
        return self._fingerprint_cache[1]

    # ---- text ----------------------------------------------------------------------------------
    def tokenize(self, texts: List[str]) -> torch.Tensor:
        return self.tokenizer(texts)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """(M, L) token ids -> (M, D) text embeddings (not normalised)."""
        self.text_forward_count += 1
        tokens = tokens.to(self.model.logit_scale.device)
        if not self._causal_argmax_text():
            return self.model.encode_text(tokens)
        # Causal attention: the end-of-text token (the largest id, where open_clip pools) never
        # sees the padding after it, so the context is cut after the longest prompt's end: the
        # same embeddings, 77 / length times less work.
        model = self.model
        n = int(tokens.argmax(dim=-1).max()) + 1
        tokens = tokens[:, :n]
        cast_dtype = model.transformer.get_cast_dtype()
        x = model.token_embedding(tokens).to(cast_dtype) + model.positional_embedding[:n].to(cast_dtype)
        x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask[:n, :n]))
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        if model.text_projection is None:
            return x
        return model.text_projection(x) if isinstance(model.text_projection, nn.Linear) else x @ model.text_projection

    def _causal_argmax_text(self) -> bool:
        """Whether the text tower is open_clip's own causal transformer pooled at the end token."""
        from open_clip.model import CLIP

        model = self.model
        return (type(model) is CLIP and getattr(model, "text_pool_type", "") == "argmax"
                and getattr(model, "attn_mask", None) is not None)

    # ---- images --------------------------------------------------------------------------------
    def forward_features(self, images: torch.Tensor, last_block: bool = True) -> Dict[str, torch.Tensor]:
        """Dense visual features of normalised images (B, 3, H, W).

        Returns:
            ConvNeXt: ``res2``..``res5``: (B, C_i, H/s, W/s) for strides s = 4, 8, 16, 32.
            ViT: ``pre_last``: (B, 1 + hw, C) the input of the last block (for value-path dense
            embeddings), ``grid``: (h, w) = (H/p, W/p); and unless ``last_block`` is False,
            ``res4``: (B, C, h, w) patch tokens after the last block and ``cls``: (B, C) the class
            token after it.
        """
        if self.kind == "convnext":
            trunk = self.model.visual.trunk
            x = trunk.stem(images)
            out = {}
            for i, stage in enumerate(trunk.stages):
                x = stage(x)
                out[f"res{i + 2}"] = x
            return out
        return self._vit_features(images, last_block)

    def _vit_features(self, images: torch.Tensor, last_block: bool = True) -> Dict[str, torch.Tensor]:
        visual = self.model.visual
        b, _, h, w = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"Image size {h}x{w} is not a multiple of the patch size {p}.")
        x = visual.conv1(images)  # (B, C, h, w)
        gh, gw = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        cls = visual.class_embedding.to(x.dtype).expand(b, 1, -1)
        x = torch.cat([cls, x], dim=1)
        pos = _interpolate_pos_embed(visual.positional_embedding, visual.grid_size, (gh, gw))
        x = visual.ln_pre(x + pos.to(x.dtype))
        blocks = visual.transformer.resblocks
        batch_first = getattr(visual.transformer, "batch_first", True)
        if not batch_first:
            x = x.transpose(0, 1)
        for blk in blocks[:-1]:
            x = blk(x)
        out = {"pre_last": x if batch_first else x.transpose(0, 1), "grid": (gh, gw)}
        if last_block:
            x = blocks[-1](x)
            if not batch_first:
                x = x.transpose(0, 1)
            out["res4"] = x[:, 1:].transpose(1, 2).reshape(b, -1, gh, gw)
            out["cls"] = x[:, 0]
        return out

    def value_path_parameters(self) -> List[nn.Parameter]:
        """ViT parameters the value-path dense embedding never uses (last block's MLP branch)."""
        if self.kind != "vit":
            return []
        blk = self.model.visual.transformer.resblocks[-1]
        return [p for m in (blk.ln_2, blk.mlp, blk.ls_2) for p in m.parameters()]

    def dense_embedding(self, feats: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-pixel embeddings in the joint space, (B, D, h, w), not normalised.

        ConvNeXt: the CLIP head (LayerNorm + linear projection) applied to every res5 pixel.
        ViT: MaskCLIP's value path: the last block's value and output projections applied to every
        token of its input (no query-key attention, no residual, no MLP), then ``ln_post`` and the
        projection.
        """
        if self.kind == "convnext":
            return self._convnext_head(feats["res5"])
        visual = self.model.visual
        blk = visual.transformer.resblocks[-1]
        x = blk.ln_1(feats["pre_last"][:, 1:])
        width = x.shape[-1]
        v = F.linear(x, blk.attn.in_proj_weight[2 * width:], blk.attn.in_proj_bias[2 * width:])
        v = blk.ls_1(blk.attn.out_proj(v))
        v = visual.ln_post(v)
        if visual.proj is not None:
            v = v @ visual.proj
        gh, gw = feats["grid"]
        return v.transpose(1, 2).reshape(v.shape[0], -1, gh, gw)

    def _convnext_head(self, x: torch.Tensor) -> torch.Tensor:
        """The CLIP head (LayerNorm + projection) on every pixel: (B, C5, h, w) -> (B, D, h, w)."""
        visual = self.model.visual
        x = visual.trunk.head.norm(visual.trunk.norm_pre(x))
        return visual.head(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Global image embeddings (B, D) at any input size (position embeddings interpolated)."""
        if self.kind == "convnext":
            return self.model.visual(images)
        visual = self.model.visual
        feats = self._vit_features(images)
        x = visual.ln_post(feats["cls"])
        return x @ visual.proj if visual.proj is not None else x


def count_parameters(module: nn.Module) -> Dict[str, int]:
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


