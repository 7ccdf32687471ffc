"""Config loading and process set-up shared by train_net.py, the demo and the tools."""
import logging
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
        cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on the CPU (MODEL.DEVICE cpu).")
        cfg.MODEL.DEVICE = "cpu"
        if cfg.SOLVER.AMP.ENABLED and cfg.SOLVER.AMP.DTYPE == "float16":
            logger.warning("fp16 AMP needs CUDA: training in fp32 (SOLVER.AMP.ENABLED False).")
            cfg.SOLVER.AMP.ENABLED = False
    return cfg


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
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=_rank(), name="ovss_d2")
    return cfg


def _rank() -> int:
    from detectron2.utils import comm

    return comm.get_rank()
