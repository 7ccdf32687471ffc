"""Config loading and process set-up shared by train_net.py, the demo and the tools."""
import logging
import os
from typing import Sequence

import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import default_setup
from detectron2.utils.logger import setup_logger

from ..checkpoint import check_weights_file, is_no_checkpoint
from ..config import add_ovss_config
from ..data.datasets import verify_sem_seg_dataset

logger = logging.getLogger(__name__)


def load_config(config_file: str = "", opts: Sequence[str] = ()) -> CfgNode:
    """detectron2 defaults + ovss-d2 keys + ``config_file`` + ``opts`` (not frozen).

    Without CUDA, ``MODEL.DEVICE cuda`` falls back to ``cpu`` with a warning, and fp16 AMP (which
    needs CUDA) is turned off."""
    cfg = get_cfg()
    add_ovss_config(cfg)
    if config_file:
        check_config_file(config_file)
        cfg.merge_from_file(config_file, allow_unsafe=False)
    if len(opts) % 2:
        raise ValueError(f"Config overrides must be KEY VALUE pairs; got an odd number: {list(opts)}.")
    cfg.merge_from_list(list(opts))
    return resolve_device(cfg)


def check_config_file(config_file: str, _chain: Sequence[str] = ()) -> None:
    """Fail with one line naming the file when a config or one of its ``_BASE_`` files (one path
    or a list, relative to the file naming it) is missing, not plain YAML, empty, not a mapping of
    keys, or inherits from itself (the chain is named)."""
    real = os.path.realpath(config_file)
    chain = list(_chain) + [config_file]
    if real in {os.path.realpath(c) for c in _chain}:
        raise ValueError(f"Config file {config_file} inherits from itself: _BASE_ chain {' -> '.join(chain)}. "
                         "Remove the _BASE_ line that closes the loop.")
    if not os.path.isfile(config_file):
        named_by = f" (the _BASE_ of {_chain[-1]})" if _chain else ""
        raise FileNotFoundError(f"Config file {config_file!r}{named_by} not found: give a path such as "
                                "configs/toy/sed_toy.yaml.")
    try:
        with open(config_file, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).strip().splitlines()[0]
        raise ValueError(f"Config file {config_file} is not plain YAML ({type(e).__name__}: {first}): configs "
                         "are KEY: value mappings such as configs/toy/sed_toy.yaml (no Python tags).") from None
    if data is None:
        raise ValueError(f"Config file {config_file} is empty: give a config such as configs/toy/sed_toy.yaml, or "
                         "a file with at least _BASE_: \"<a config>\".")
    if not isinstance(data, dict):
        raise ValueError(f"Config file {config_file} holds a YAML {type(data).__name__}, not a mapping of "
                         "KEY: value (see configs/toy/sed_toy.yaml).")
    bases = data.get("_BASE_") or []
    for base in [bases] if isinstance(bases, str) else bases:
        base = os.path.expanduser(str(base))
        if not base.startswith(("/", "https://", "http://")):
            base = os.path.join(os.path.dirname(config_file), base)
        if "://" not in base:
            check_config_file(base, chain)


def check_solver(cfg: CfgNode, world_size: int = 1) -> None:
    """Training settings that would fail later with a traceback: SOLVER.IMS_PER_BATCH must be a
    positive multiple of the number of processes."""
    batch = cfg.SOLVER.IMS_PER_BATCH
    if not isinstance(batch, int) or batch < 1 or batch % world_size:
        raise ValueError(f"SOLVER.IMS_PER_BATCH {batch!r} must be a positive whole number of images per iteration, "
                         f"a multiple of the number of processes ({world_size}): e.g. SOLVER.IMS_PER_BATCH "
                         f"{max(world_size, 1) * 2}.")


def resolve_device(cfg: CfgNode) -> CfgNode:
    """Without CUDA, ``MODEL.DEVICE cuda`` falls back to ``cpu`` with a warning, and fp16 AMP (which
    needs CUDA) is turned off. Call it again after changing MODEL.DEVICE; returns ``cfg``."""
    try:
        torch.device(cfg.MODEL.DEVICE)
    except RuntimeError:
        raise ValueError(f"MODEL.DEVICE {cfg.MODEL.DEVICE!r} is not a device: use cpu, cuda or cuda:N.") from None
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on the CPU (MODEL.DEVICE cpu).")
        cfg.MODEL.DEVICE = "cpu"
        if cfg.SOLVER.AMP.ENABLED and cfg.SOLVER.AMP.DTYPE == "float16":
            logger.warning("fp16 AMP needs CUDA: training in fp32 (SOLVER.AMP.ENABLED False).")
            cfg.SOLVER.AMP.ENABLED = False
    return cfg


def skip_initial_clip_weights(cfg: CfgNode, weights: str) -> CfgNode:
    """When ``weights`` (a full checkpoint, loaded strictly) will set every model tensor, build CLIP
    without the initial weights of MODEL.CLIP.PRETRAINED: they would be overwritten, and a trained
    model must run on a machine without them. What no checkpoint stores is kept: QuickGELU, which
    an open_clip tag implies, goes to MODEL.CLIP.QUICK_GELU; a local CLIP file that exists is still
    read (its layout decides QuickGELU). Changes ``cfg`` in place (unfrozen); returns it."""
    from ..modeling.clip.weights import NO_WEIGHTS, is_weights_tag

    clip = cfg.MODEL.CLIP
    pretrained = str(clip.PRETRAINED)
    if is_no_checkpoint(weights) or not cfg.MODEL.WEIGHTS_STRICT or pretrained.lower() in NO_WEIGHTS:
        return cfg
    if not is_weights_tag(pretrained) and os.path.isfile(os.path.expanduser(pretrained)):
        return cfg  # as resolve_clip_weights: a registered tag first, then a local file
    if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        logger.warning(f"MODEL.CLIP.PRETRAINED {pretrained} does not exist; the CLIP weights come from {weights}. "
                       f"If that file was an OpenAI-layout checkpoint, set MODEL.CLIP.QUICK_GELU True.")
    elif not is_weights_tag(pretrained):
        import open_clip

        tag = open_clip.get_pretrained_cfg(clip.NAME, pretrained)
        if not tag:
            return cfg  # not a tag either: the CLIP wrapper reports it
        clip.QUICK_GELU = bool(clip.QUICK_GELU or tag.get("quick_gelu", False))
    logger.info(f"CLIP weights from {weights}: MODEL.CLIP.PRETRAINED {pretrained} is not loaded.")
    clip.PRETRAINED = "none"
    return cfg


def resumes(cfg: CfgNode, resume: bool) -> bool:
    """Whether ``--resume`` will load OUTPUT_DIR's last checkpoint (there is one) instead of
    MODEL.WEIGHTS."""
    return bool(resume) and os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "last_checkpoint"))


def check_datasets(cfg: CfgNode, config_file: str = "", verify_train: bool = True) -> None:
    """Fail at start-up, not inside a data loader, when a configured dataset is not registered, or
    is a folder dataset whose folders are missing or half-prepared (the message names the path and
    the prepare command; see :func:`ovss_d2.data.datasets.verify_sem_seg_dataset`). With
    ``verify_train`` False (evaluation only) the training datasets need only be registered."""
    registered = set(DatasetCatalog.list())
    for key in ("TRAIN", "TEST"):
        for name in cfg.DATASETS[key]:
            if name not in registered:
                where = f" of {config_file}" if config_file else ""
                raise KeyError(
                    f"Dataset {name!r} in DATASETS.{key}{where} is not registered. Registered "
                    f"datasets: {sorted(registered)}. Register it (ovss_d2.data.register_sem_seg_dataset) "
                    f"or see datasets/README.md for the built-in benchmarks."
                )
            if key == "TEST" or verify_train:
                verify_sem_seg_dataset(name)


def setup(args) -> CfgNode:
    """Config from the command line, checked, frozen, with detectron2's default set-up
    (output directory, logging, environment info, seeding)."""
    cfg = load_config(args.config_file, args.opts)
    check_datasets(cfg, args.config_file, verify_train=not getattr(args, "eval_only", False))
    if not getattr(args, "eval_only", False):
        check_solver(cfg, _world_size())
    if not resumes(cfg, getattr(args, "resume", False)):
        check_weights_file(cfg.MODEL.WEIGHTS)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=_rank(), name="ovss_d2")
    return cfg


def _world_size() -> int:
    from detectron2.utils import comm

    return comm.get_world_size()


def _rank() -> int:
    from detectron2.utils import comm

    return comm.get_rank()
