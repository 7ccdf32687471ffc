"""Config loading and process set-up shared by train_net.py, the demo and the tools."""
import logging
import os
from typing import Sequence

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog
from detectron2.engine import default_setup
from detectron2.utils.logger import setup_logger

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
        if not os.path.isfile(config_file):
            raise FileNotFoundError(f"Config file {config_file!r} not found: give a path such as "
                                    "configs/toy/sed_toy.yaml.")
        cfg.merge_from_file(config_file)
    if len(opts) % 2:
        raise ValueError(f"Config overrides must be KEY VALUE pairs; got an odd number: {list(opts)}.")
    cfg.merge_from_list(list(opts))
    return resolve_device(cfg)


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
    from ..modeling.clip.wrapper import NO_WEIGHTS

    clip = cfg.MODEL.CLIP
    pretrained = str(clip.PRETRAINED)
    if not weights or not cfg.MODEL.WEIGHTS_STRICT or pretrained.lower() in NO_WEIGHTS:
        return cfg
    if os.path.isfile(os.path.expanduser(pretrained)):
        return cfg
    if os.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")):
        logger.warning(f"MODEL.CLIP.PRETRAINED {pretrained} does not exist; the CLIP weights come from {weights}. "
                       f"If that file was an OpenAI-layout checkpoint, set MODEL.CLIP.QUICK_GELU True.")
    elif pretrained != "toyworld":
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


def check_weights_file(weights: str, name: str = "MODEL.WEIGHTS") -> None:
    """Fail before anything is built when ``weights``, a local checkpoint path, does not exist (an
    empty value is no checkpoint; URLs are the checkpointer's). ``name`` says where it was given."""
    if weights and "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(f"{name} {weights} not found: give the checkpoint of a trained model "
                                "(e.g. OUTPUT_DIR/model_final.pth of train_net.py).")


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
    if not resumes(cfg, getattr(args, "resume", False)):
        check_weights_file(cfg.MODEL.WEIGHTS)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=_rank(), name="ovss_d2")
    return cfg


def _rank() -> int:
    from detectron2.utils import comm

    return comm.get_rank()
