"""Optimizer with parameter groups: CLIP weights get SOLVER.CLIP_LR_MULTIPLIER x the base
learning rate; norms and embeddings get their own weight decay (``SOLVER.WEIGHT_DECAY_RULE``
"norm_embed"), or every 1-D tensor and bias none ("mae"); frozen weights are left out."""
import itertools
import logging
from typing import Dict, List

import torch
import torch.nn as nn
from detectron2.solver.build import maybe_add_gradient_clipping

from ..modeling.clip import CLIPWrapper

logger = logging.getLogger(__name__)

NORM_TYPES = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm, nn.InstanceNorm1d,
    nn.InstanceNorm2d, nn.InstanceNorm3d, nn.LayerNorm, nn.LocalResponseNorm,
)
EMBEDDING_NAMES = ("positional_embedding", "class_embedding", "pos_embed", "cls_token", "mask_token",
                   "relative_position_bias_table", "absolute_pos_embed")


WEIGHT_DECAY_RULES = ("norm_embed", "mae")


def exempt_from_decay(name: str, param: torch.Tensor) -> bool:
    """MAE's and GroupViT's rule (their optimizers' parameter groups): every 1-D tensor (norm
    weights and biases, ...) and every bias is exempt; every other tensor decays, position
    embeddings and mask / group tokens included."""
    return param.ndim <= 1 or name == "bias" or name.endswith(".bias")


def clip_parameter_ids(model: nn.Module) -> set:
    return {id(p) for m in model.modules() if isinstance(m, CLIPWrapper) for p in m.parameters()}


def build_param_groups(cfg, model: nn.Module) -> List[Dict]:
    """One group per distinct (learning rate, weight decay), each with a ``name`` for the logs."""
    base_lr = cfg.SOLVER.BASE_LR
    rule = cfg.SOLVER.WEIGHT_DECAY_RULE
    if rule not in WEIGHT_DECAY_RULES:
        raise ValueError(f"SOLVER.WEIGHT_DECAY_RULE {rule!r} is not one of {WEIGHT_DECAY_RULES}.")
    clip_ids = clip_parameter_ids(model)
    groups: Dict[tuple, Dict] = {}
    seen = set()
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            is_clip = id(p) in clip_ids
            lr = base_lr * (cfg.SOLVER.CLIP_LR_MULTIPLIER if is_clip else 1.0)
            if rule == "mae":
                wd, kind = (0.0, "no_decay") if exempt_from_decay(pname, p) else (cfg.SOLVER.WEIGHT_DECAY, "decay")
            elif isinstance(module, NORM_TYPES):
                wd, kind = cfg.SOLVER.WEIGHT_DECAY_NORM, "norm"
            elif isinstance(module, nn.Embedding) or pname in EMBEDDING_NAMES:
                wd, kind = cfg.SOLVER.WEIGHT_DECAY_EMBED, "embed"
            else:
                wd, kind = cfg.SOLVER.WEIGHT_DECAY, "weight"
            key = (lr, wd)
            if key not in groups:
                groups[key] = {"params": [], "lr": lr, "weight_decay": wd,
                               "name": f"{'clip' if is_clip else 'head'}-{kind}"}
            groups[key]["params"].append(p)
    if not groups:
        raise ValueError(
            "The model has no trainable parameters, so there is nothing to train. The training-free "
            "baseline is evaluated with --eval-only; to fine-tune CLIP set MODEL.CLIP.FREEZE_IMAGE False."
        )
    for g in groups.values():
        logger.info(f"param group {g['name']}: {sum(p.numel() for p in g['params'])} params, "
                    f"lr {g['lr']:.3g}, weight decay {g['weight_decay']:.3g}")
    return list(groups.values())


def _full_model_gradient_clipping(optim_cls, clip_norm: float):
    class FullModelGradientClipping(optim_cls):
        def step(self, closure=None):
            params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
            return super().step(closure=closure)

    FullModelGradientClipping.__name__ = optim_cls.__name__ + "WithFullModelGradientClip"
    return FullModelGradientClipping


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """SOLVER.OPTIMIZER in {SGD, ADAM, ADAMW}, with SOLVER.CLIP_GRADIENTS (``value``, ``norm`` per
    parameter, or ``full_model``: one norm over all parameters)."""
    groups = build_param_groups(cfg, model)
    name = cfg.SOLVER.OPTIMIZER.upper()
    if name == "SGD":
        cls, kwargs = torch.optim.SGD, {"momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV}
    elif name in ("ADAMW", "ADAM"):
        cls = torch.optim.AdamW if name == "ADAMW" else torch.optim.Adam
        kwargs = {"betas": tuple(cfg.SOLVER.BETAS)}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER={cfg.SOLVER.OPTIMIZER!r}: use SGD, ADAM or ADAMW.")
    clip = cfg.SOLVER.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        cls = _full_model_gradient_clipping(cls, clip.CLIP_VALUE)
    else:
        cls = maybe_add_gradient_clipping(cfg, cls)
    return cls(groups, lr=cfg.SOLVER.BASE_LR, **kwargs)
