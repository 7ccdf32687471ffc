"""The checkpointer: detectron2's, plus

- converters that recognise the official checkpoint layouts of the methods (registered by each
  method) and translate them to ours on load;
- strict loading (the default): a checkpoint that leaves a model tensor unset, holds tensors the
  model does not have, or holds one of another shape is an error naming them, so weights of another
  method or config never evaluate half-random; ``strict=False`` (``MODEL.WEIGHTS_STRICT False``)
  loads what fits, for fine-tuning from another model;
- resuming past a corrupt or missing last checkpoint: the latest intact earlier one is used, with a
  warning naming the bad one.
"""
import logging
import os
import re
from typing import Callable, Dict, List, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

logger = logging.getLogger(__name__)

# Each converter takes a state dict and returns it converted, or None if it is not its layout.
CHECKPOINT_CONVERTERS: List[Callable[[Dict[str, torch.Tensor]], Optional[Dict[str, torch.Tensor]]]] = []

STRICT_OPT_OUT = "MODEL.WEIGHTS_STRICT False"
PERIODIC_CHECKPOINT = re.compile(r"model_(\d+)\.pth")


class CheckpointMismatchError(ValueError):
    """A checkpoint whose tensors do not match the model's (strict loading)."""


class NoIntactCheckpointError(OSError):
    """``--resume`` found checkpoints in OUTPUT_DIR but none of them can be read."""


def register_checkpoint_converter(fn):
    CHECKPOINT_CONVERTERS.append(fn)
    return fn


def convert_state_dict(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    for convert in CHECKPOINT_CONVERTERS:
        converted = convert(state_dict)
        if converted is not None:
            logger.info(f"Converted checkpoint layout with {convert.__name__}")
            return converted
    return state_dict


def first_few(items: List[str], limit: int = 4) -> str:
    """The first ``limit`` items, comma-separated, and how many more there are (for messages)."""
    shown = ", ".join(items[:limit])
    return shown + (f", ... (+{len(items) - limit} more)" if len(items) > limit else "")


def mismatch(model: torch.nn.Module, state_dict: Dict[str, torch.Tensor]) -> Dict[str, List[str]]:
    """What loading ``state_dict`` into ``model`` would leave wrong: ``missing`` model tensors (a
    parameter shared under several names counts as loaded when one of them is), ``unexpected``
    checkpoint tensors and tensors of another ``shape`` (``"key (checkpoint) vs (model)"``).
    Non-persistent buffers are not part of a checkpoint and are not checked."""
    own = model.state_dict(keep_vars=True)
    loaded_ids = {id(own[k]) for k in state_dict if k in own}
    missing = sorted(k for k, t in own.items() if k not in state_dict and id(t) not in loaded_ids)
    unexpected = sorted(k for k in state_dict if k not in own)
    shape = sorted(f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state_dict.items()
                   if k in own and hasattr(v, "shape") and tuple(v.shape) != tuple(own[k].shape))
    return {"missing": missing, "unexpected": unexpected, "shape": shape}


class OVSSCheckpointer(DetectionCheckpointer):
    """detectron2's checkpointer with layout converters, strict loading and a resume that skips a
    corrupt last checkpoint (see the module docstring).

    Args:
        strict: refuse a checkpoint that does not set exactly the model's tensors (default); False
            loads the tensors that fit and warns about the rest.
    """

    def __init__(self, model, save_dir: str = "", *, strict: bool = True, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.strict = strict
        self._path: Optional[str] = None
        self._preloaded = None  # (path, checkpoint) read while looking for an intact one

    def load(self, path, *args, **kwargs):
        self._path = path
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename):
        if self._preloaded is not None and self._preloaded[0] == filename:
            checkpoint, self._preloaded = self._preloaded[1], None
            return checkpoint
        return super()._load_file(filename)

    def _load_model(self, checkpoint):
        if isinstance(checkpoint.get("model"), dict):
            checkpoint["model"] = convert_state_dict(checkpoint["model"])
            if self.strict and not checkpoint.get("matching_heuristics", False):
                self._check_fits(checkpoint["model"])
        return super()._load_model(checkpoint)

    def _check_fits(self, state_dict: Dict[str, torch.Tensor]) -> None:
        if state_dict and all(k.startswith("module.") for k in state_dict):  # saved from a DDP model
            state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
        found = mismatch(self.model, state_dict)
        if not any(found.values()):
            return
        parts = []
        if found["missing"]:
            parts.append(f"{len(found['missing'])} model tensors are not in it ({first_few(found['missing'])})")
        if found["unexpected"]:
            parts.append(f"{len(found['unexpected'])} of its tensors are not in the model "
                         f"({first_few(found['unexpected'])})")
        if found["shape"]:
            parts.append(f"{len(found['shape'])} have another shape ({first_few(found['shape'], 2)})")
        raise CheckpointMismatchError(
            f"Checkpoint {self._path} does not fit this {type(self.model).__name__} model: " + "; ".join(parts)
            + ". It was saved from another method or config: use the config it was trained with, or, to "
            f"fine-tune from it anyway (unmatched tensors keep their initialisation), set {STRICT_OPT_OUT}."
        )

    # ---- resume --------------------------------------------------------------------------------
    def resume_or_load(self, path: str, *, resume: bool = True):
        if resume and self.has_checkpoint():
            return self.load(self.latest_intact_checkpoint())
        return self.load(path, checkpointables=[])

    def earlier_checkpoints(self, last: str) -> List[str]:
        """The periodic checkpoints ``model_XXXXXXX.pth`` of ``save_dir`` older than ``last``
        (every one when ``last`` is not periodic, e.g. ``model_final.pth``), newest first."""
        m = PERIODIC_CHECKPOINT.fullmatch(os.path.basename(last))
        limit = int(m.group(1)) if m else float("inf")
        found = []
        for name in os.listdir(self.save_dir):
            m = PERIODIC_CHECKPOINT.fullmatch(name)
            if m and int(m.group(1)) < limit:
                found.append((int(m.group(1)), os.path.join(self.save_dir, name)))
        return [p for _, p in sorted(found, reverse=True)]

    def latest_intact_checkpoint(self) -> str:
        """The checkpoint ``last_checkpoint`` names if it can be read, else the newest earlier one
        that can (read once: :meth:`load` reuses it), with a warning naming the bad ones."""
        last = self.get_checkpoint_file()
        bad = []
        for path in [last] + self.earlier_checkpoints(last):
            try:
                self._preloaded = (path, self._load_file(path))
            except Exception as e:  # noqa: BLE001 - truncated zip, bad pickle, missing file: all unusable
                bad.append(f"{path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'})")
                continue
            if bad:
                logger.warning(f"Resuming from {path}: the later checkpoint(s) {'; '.join(bad)} cannot be read.")
            return path
        raise NoIntactCheckpointError(
            f"--resume: no readable checkpoint in {self.save_dir}: {'; '.join(bad)}. Delete "
            f"{os.path.join(self.save_dir, 'last_checkpoint')} to start from MODEL.WEIGHTS, or use another OUTPUT_DIR."
        )
