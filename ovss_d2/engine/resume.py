"""``--resume`` with a changed config: the current config's solver settings are applied and the
keys that differ from the checkpoint's config are named in a warning.

A detectron2 checkpoint restores the optimizer's parameter groups (learning rate, weight decay,
momentum / betas...) and the scheduler's base learning rates as they were saved, so a resumed run
would silently keep the old ``SOLVER.BASE_LR`` while its ``config.yaml`` records the new one. We
choose to follow the config (what ``config.yaml`` says is what runs): after loading, every
hyperparameter of the optimizer's groups and every setting of the scheduler is taken from the
freshly built ones; only the progress (iteration, optimizer moments, the scheduler's step count)
comes from the checkpoint, and the current learning rate is recomputed from the new schedule.
A resume with an unchanged config changes nothing (the values are equal), so it stays exact.
"""
import logging
import warnings
from typing import Dict, List, Optional, Tuple

from detectron2.config import CfgNode

logger = logging.getLogger(__name__)

# The scheduler's progress: taken from the checkpoint. Every other entry of its state is a setting.
SCHEDULER_PROGRESS = ("last_epoch", "_step_count", "_last_lr", "_get_lr_called_within_step", "_is_initial")
# Group entries that are progress, not settings: the current rate follows the schedule.
GROUP_PROGRESS = ("params", "lr")
# Keys a resume ignores by design: the checkpoint replaces MODEL.WEIGHTS; OUTPUT_DIR holds it.
IGNORED_KEYS = ("MODEL.WEIGHTS", "OUTPUT_DIR")


def flatten(node, prefix: str = "") -> Dict[str, object]:
    """{"SOLVER.BASE_LR": 0.001, ...} of a (nested) CfgNode or dict."""
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_changes(saved_yaml: str, cfg: CfgNode) -> List[Tuple[str, object, object]]:
    """(key, value in the checkpoint's config, value now) for every key that differs, sorted."""
    saved = flatten(CfgNode.load_cfg(saved_yaml))
    now = flatten(CfgNode.load_cfg(cfg.dump()))  # the same YAML round trip: tuples vs lists compare equal
    keys = sorted((set(saved) | set(now)) - set(IGNORED_KEYS))
    return [(k, saved.get(k, "(absent)"), now.get(k, "(absent)")) for k in keys if saved.get(k) != now.get(k)]


def solver_settings(optimizer, scheduler) -> Dict[str, object]:
    """The settings a checkpoint would overwrite: each parameter group's hyperparameters (not its
    parameters or current rate) and the scheduler's state without its progress."""
    groups = [{k: v for k, v in g.items() if k not in GROUP_PROGRESS} for g in optimizer.param_groups]
    state = scheduler.state_dict() if scheduler is not None and hasattr(scheduler, "state_dict") else {}
    return {"groups": groups, "scheduler": {k: v for k, v in state.items() if k not in SCHEDULER_PROGRESS}}


def apply_current_settings(optimizer, scheduler, current: Dict[str, object]) -> bool:
    """Put back this run's ``current`` settings (from :func:`solver_settings` before loading) over
    those a checkpoint loaded, and set each group's rate to the schedule's value at the loaded
    iteration. Returns whether anything differed."""
    loaded = solver_settings(optimizer, scheduler)
    if loaded == current:
        return False
    for group, settings in zip(optimizer.param_groups, current["groups"]):
        group.update(settings)
    if scheduler is not None and current["scheduler"]:
        state = scheduler.state_dict()
        state.update(current["scheduler"])
        scheduler.load_state_dict(state)
    if scheduler is not None and hasattr(scheduler, "get_lr"):
        with warnings.catch_warnings():  # torch's "call get_last_lr()" hint: the closed form is meant here
            warnings.simplefilter("ignore", UserWarning)
            rates = scheduler.get_lr()
        for group, lr in zip(optimizer.param_groups, rates):
            group["lr"] = lr
        scheduler._last_lr = list(rates)
    return True


def warn_about_changes(saved_yaml: Optional[str], cfg: CfgNode, settings_differed: bool, path: str = "") -> None:
    """One warning naming the keys that differ from the checkpoint's config and saying that the
    current values are used (nothing when the configs are equal)."""
    try:
        changes = config_changes(saved_yaml, cfg) if isinstance(saved_yaml, str) else []
    except Exception:  # noqa: BLE001 - a config text we cannot parse: compare the settings alone
        changes = []
    where = f" {path}" if path else ""
    if changes:
        listed = "; ".join(f"{k}: {old!r} in the checkpoint, {new!r} now" for k, old, new in changes)
        logger.warning(
            f"Resuming from checkpoint{where}, saved with another config: {listed}. The current values are used "
            "(learning rates, weight decay and the schedule included); the weights, optimizer moments and "
            "iteration come from the checkpoint.")
    elif settings_differed:  # a checkpoint without its config (saved by an older ovss-d2)
        logger.warning(
            f"Resuming from checkpoint{where}, whose optimizer or schedule settings (learning rates, weight decay...) "
            "differ from the current config's: the current values are used. The checkpoint does not record "
            "its config, so the keys cannot be named.")
