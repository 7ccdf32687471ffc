"""Learning-rate schedules detectron2 v0.6 does not have, picked by ``SOLVER.LR_SCHEDULER_NAME``
like detectron2's own (``OVSSTrainer.build_lr_scheduler`` asks :func:`build_lr_scheduler` first).

``WarmupHalfCosineLR`` is MAE's schedule (facebookresearch/mae ``util/lr_sched.py``), which ZeroSeg
trains with: per iteration, a linear warm-up from 0 to the base rate over ``warmup_iters``, then half
a cosine period from the base rate down to ``min_factor`` x the base rate at ``max_iters``. (detectron2's
``WarmupCosineLR`` multiplies a cosine over the whole run by the warm-up factor, so it peaks below the
base rate when the warm-up is long: 0.85x with ZeroSeg's 20 of 80 epochs.)
"""
import math
from typing import Callable, Dict

import torch
from torch.optim.lr_scheduler import _LRScheduler


def half_cosine_factor(iteration: int, max_iters: int, warmup_iters: int, min_factor: float = 0.0) -> float:
    """Factor of the base rate at ``iteration`` (0-based): ``iteration / warmup_iters`` during the
    warm-up, then ``min + (1 - min) * (1 + cos(pi * t)) / 2`` with t the fraction of the rest done."""
    if iteration < warmup_iters:
        return iteration / warmup_iters
    t = min(1.0, (iteration - warmup_iters) / max(1, max_iters - warmup_iters))
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


class WarmupHalfCosineLR(_LRScheduler):
    """Every parameter group's rate = its initial rate x :func:`half_cosine_factor` (stepped once per
    iteration, as detectron2's LRScheduler hook does). A ``_LRScheduler``, not only an ``LRScheduler``:
    detectron2 v0.6's hook saves and restores the state of ``_LRScheduler`` instances alone, so
    ``--resume`` continues the schedule instead of restarting it."""

    def __init__(self, optimizer: torch.optim.Optimizer, max_iters: int, warmup_iters: int,
                 min_factor: float = 0.0, last_epoch: int = -1):
        if not 0 <= warmup_iters <= max_iters:
            raise ValueError(f"SOLVER.WARMUP_ITERS {warmup_iters} must be between 0 and SOLVER.MAX_ITER {max_iters}.")
        self.max_iters, self.warmup_iters, self.min_factor = max_iters, warmup_iters, min_factor
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        factor = half_cosine_factor(self.last_epoch, self.max_iters, self.warmup_iters, self.min_factor)
        return [base_lr * factor for base_lr in self.base_lrs]


def _half_cosine(cfg, optimizer):
    return WarmupHalfCosineLR(optimizer, cfg.SOLVER.MAX_ITER, cfg.SOLVER.WARMUP_ITERS,
                              cfg.SOLVER.HALF_COSINE_MIN_FACTOR)


# SOLVER.LR_SCHEDULER_NAME -> builder(cfg, optimizer); other names go to detectron2's build_lr_scheduler.
LR_SCHEDULERS: Dict[str, Callable] = {"WarmupHalfCosineLR": _half_cosine}


def build_lr_scheduler(cfg, optimizer: torch.optim.Optimizer):
    """Our schedule for a name in :data:`LR_SCHEDULERS`, else detectron2's (which names the ones it knows)."""
    builder = LR_SCHEDULERS.get(cfg.SOLVER.LR_SCHEDULER_NAME)
    if builder is not None:
        return builder(cfg, optimizer)
    from detectron2.solver import build_lr_scheduler as detectron2_build_lr_scheduler

    return detectron2_build_lr_scheduler(cfg, optimizer)
