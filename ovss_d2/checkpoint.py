"""The checkpointer: detectron2's, plus

- converters that recognise the official checkpoint layouts of the methods (registered by each
  method) and translate them to ours on load;
- strict loading (the default): a checkpoint that leaves a model tensor unset, holds tensors the
  model does not have, or holds one of another shape is an error naming them, so weights of another
  method or config never evaluate half-random; ``strict=False`` (``MODEL.WEIGHTS_STRICT False``)
  loads what fits, for fine-tuning from another model;
- resuming past a corrupt or missing last checkpoint: the latest intact earlier one is used, with a
  warning naming the bad one;
- data-only reading (:func:`load_checkpoint_file`): a checkpoint is unpickled with tensors, numbers,
  strings, containers and NumPy arrays allowed and nothing else, so a crafted file cannot run code
  (detectron2 would ``pickle.load`` a ``.pkl`` file, and fvcore leaves ``weights_only`` to torch's
  default and its environment override).
"""
import codecs
import collections
import logging
import os
import pickle
import re
import tempfile
import zipfile
from typing import Any, Callable, Dict, List, Optional

import numpy as np
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


class UnsafeCheckpointError(ValueError):
    """A checkpoint that holds Python objects other than tensors, numbers, strings, containers and
    NumPy arrays: unpickling them could run code from the file, so it is not read."""


class CheckpointReadError(ValueError):
    """A file that cannot be read as a checkpoint: truncated, damaged, or no checkpoint at all."""


# ---- reading checkpoint files as data only ------------------------------------------------------
# MODEL.WEIGHTS / --weights / the Predictor's weights set to this mean "no checkpoint": the model keeps
# its initialisation (for --eval-only of a model with trainable parts, on purpose).
NO_CHECKPOINT = "none"

# The NumPy globals a pickled array, dtype or scalar refers to (detectron2 model-zoo .pkl files and
# checkpoints of older code hold NumPy arrays / scalars): building them runs no code from the file.
_NUMPY_MULTIARRAY = (np._core if hasattr(np, "_core") else np.core).multiarray  # NumPy 2 / 1
SAFE_NUMPY_GLOBALS = (_NUMPY_MULTIARRAY._reconstruct, _NUMPY_MULTIARRAY.scalar, np.ndarray, np.dtype,
                      *{type(np.dtype(c)) for c in "?bBhHiIlLqQefdgFDGSUVOMm"})  # the dtype classes
_SAFE_PICKLE_GLOBALS = {
    **{(m, f.__name__): f for m in ("numpy.core.multiarray", "numpy._core.multiarray")
       for f in SAFE_NUMPY_GLOBALS[:2]},
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("_codecs", "encode"): codecs.encode,  # how protocol 2 stores bytes
    **{("builtins", t.__name__): t for t in (set, frozenset, bytearray, complex, slice)},
    **{("__builtin__", t.__name__): t for t in (set, frozenset, bytearray, complex, slice)},  # Python 2 pickles
}
_TRUSTED_RESAVE = ("if the file is yours and you trust it, save its tensors alone: "
                   "torch.save(torch.load(path, weights_only=False)['model'], 'clean.pth')")


class _DataOnlyUnpickler(pickle.Unpickler):
    """Builds only the classes of :data:`_SAFE_PICKLE_GLOBALS`; any other global is refused."""

    def find_class(self, module, name):
        try:
            return _SAFE_PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"Unsupported global: GLOBAL {module}.{name}") from None


def _refused_global(error: Exception) -> Optional[str]:
    m = re.search(r"GLOBAL ([\w.]+)|but got <class '([\w.]+)'>", str(error))
    return (m.group(1) or m.group(2)) if m else None


def load_checkpoint_file(path: str) -> Any:
    """Read a checkpoint file (a ``.pkl`` pickle, e.g. detectron2's model zoo; else ``torch.load``)
    as data only: tensors, numbers, strings, containers and NumPy arrays / scalars. Anything else is
    refused before it is built (:class:`UnsafeCheckpointError`, naming the object); a truncated,
    damaged or non-checkpoint file is a :class:`CheckpointReadError` naming the file."""
    try:
        if path.endswith(".pkl") and not zipfile.is_zipfile(path):  # torch.save writes zips, whatever the name
            with open(path, "rb") as f:
                return _DataOnlyUnpickler(f, encoding="latin1").load()
        with torch.serialization.safe_globals(list(SAFE_NUMPY_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = _refused_global(e) or ("an object torch's data-only loader does not allow"
                                         if "weights only" in str(e).lower() else None)
        if refused is None:
            raise CheckpointReadError(_unreadable(path, e)) from None
        raise UnsafeCheckpointError(
            f"Refused to load {path}: it holds a Python object ({refused}), not only tensors, numbers and "
            f"containers, and unpickling it could run code from the file. ovss-d2 reads checkpoints as data only; "
            f"{_TRUSTED_RESAVE}.") from None
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, IndexError, TypeError, AttributeError) as e:
        # what torch and pickle raise on a truncated zip, a text file (KeyError: 101), an empty file...
        raise CheckpointReadError(_unreadable(path, e)) from None


def _unreadable(path: str, error: Exception) -> str:
    first = str(error).strip().splitlines()[0] if str(error).strip() else "no detail"
    return (f"Cannot read checkpoint {path} ({type(error).__name__}: {first}): the file is truncated or damaged "
            "(an interrupted download or copy?) or is not a PyTorch / pickle checkpoint. Download or copy it again.")


def save_atomically(obj: Any, path: str) -> None:
    """``torch.save`` to a temporary file in ``path``'s folder, then rename: ``path`` is either the
    whole new file or untouched (a full disk, an interruption), and concurrent readers never see a
    half-written file. The temporary file is removed on any failure."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            writer = _WriteErrorRecorder(f)
            try:
                torch.save(obj, writer)
            except RuntimeError:
                if writer.error is not None:  # torch's zip writer hides the OSError (ENOSPC...) behind its own
                    raise writer.error from None
                raise
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; a saved file gets the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class _WriteErrorRecorder:
    """A binary file for ``torch.save`` that keeps the first ``OSError`` of a write."""

    def __init__(self, f):
        self.f, self.error = f, None

    def write(self, data):
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = self.error or e
            raise

    def flush(self):
        return self.f.flush()


def is_no_checkpoint(weights) -> bool:
    """Whether ``weights`` (MODEL.WEIGHTS, --weights) asks for no checkpoint: empty or ``none``."""
    return not weights or str(weights).strip().lower() == NO_CHECKPOINT


def check_weights_file(weights: str, name: str = "MODEL.WEIGHTS") -> None:
    """Fail before anything is built when ``weights``, a local checkpoint path, does not exist, is a
    folder or is plainly not a checkpoint (a text file); an empty value or ``none`` is no checkpoint,
    URLs are the checkpointer's. ``name`` says where it was given."""
    if is_no_checkpoint(weights) or "://" in weights:
        return
    if os.path.isdir(weights):
        inside = sorted(n for n in os.listdir(weights) if n.endswith((".pth", ".pkl", ".pt")))
        hint = f" (it holds {first_few(inside)})" if inside else ""
        raise FileNotFoundError(f"{name} {weights} is a folder{hint}: give the checkpoint file in it, e.g. "
                                f"{os.path.join(weights, inside[-1] if inside else 'model_final.pth')}.")
    if not os.path.isfile(weights):
        raise FileNotFoundError(f"{name} {weights} not found: give the checkpoint of a trained model "
                                f"(e.g. OUTPUT_DIR/model_final.pth of train_net.py), or {NO_CHECKPOINT} for none.")
    with open(weights, "rb") as f:
        head = f.read(64)
    # torch.save writes a zip (PK) or, in the legacy format, a pickle of protocol 2 (0x80); any .pkl
    # protocol is possible. A text file (an error page saved as .pth) is neither.
    if not head or (not weights.endswith(".pkl") and not zipfile.is_zipfile(weights) and head[:1] != b"\x80"):
        what = "is empty" if not head else f"starts with {head[:24]!r}"
        raise CheckpointReadError(f"{name} {weights} is not a checkpoint: it {what}, not a PyTorch zip or pickle. "
                                  "Give the .pth file of a trained model (download it again if it is an error page).")


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
        """Load ``path`` (``""`` or ``none``: no checkpoint); a local file that is missing, a folder
        or not a checkpoint is an error naming it and the fix."""
        if is_no_checkpoint(path):
            path = ""
        else:
            check_weights_file(path, "Checkpoint")
        self._path = path
        return super().load(path, *args, **kwargs)

    def _load_file(self, filename):
        if self._preloaded is not None and self._preloaded[0] == filename:
            checkpoint, self._preloaded = self._preloaded[1], None
            return checkpoint
        data = load_checkpoint_file(filename)
        if not isinstance(data, dict):
            raise CheckpointReadError(f"Checkpoint {filename} holds a {type(data).__name__}, not a dict of tensors.")
        if filename.endswith(".pkl") and not ("model" in data and "__author__" in data):
            # Caffe2 / Detectron1 model zoo layout (detectron2's reading of it)
            data = data.get("blobs", data)
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        if filename.endswith(".pyth"):  # pycls
            if "model_state" not in data:
                raise CheckpointReadError(f"Cannot load .pyth file {filename}: pycls checkpoints hold 'model_state'.")
            state = {k: v for k, v in data["model_state"].items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return data if "model" in data else {"model": data}

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
