"""The trainer: detectron2's DefaultTrainer with our data loaders, evaluator, optimizer groups,
AMP on CUDA or CPU, DDP on CPU (gloo) and exactly resumable training."""
import logging
import os
import weakref
from collections import OrderedDict

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer, TrainerBase
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from ..checkpoint import OVSSCheckpointer
from ..data import SemSegDatasetMapper, build_test_loader, build_train_loader, build_train_mapper
from ..evaluation import OpenVocabSemSegEvaluator
from .lr_scheduler import build_lr_scheduler
from .optimizer import build_optimizer
from .resume import apply_current_settings, solver_settings, warn_about_changes
from .setup import resumes, skip_initial_clip_weights
from .train_loop import OVSSTrainLoop

logger = logging.getLogger(__name__)


def unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


def create_ddp_model(model, **kwargs):
    """DDP on GPUs (one device per process) or on the CPU (gloo, no device ids). A model with
    nothing to train (training-free evaluation) is not wrapped: rank 0's weights and buffers are
    broadcast to every process instead, as DDP would do."""
    if comm.get_world_size() == 1:
        return model
    if not any(p.requires_grad for p in model.parameters()):
        import torch.distributed as dist

        for t in model.state_dict().values():
            dist.broadcast(t, src=0)
        return model
    if next(model.parameters()).is_cuda:
        kwargs.setdefault("device_ids", [comm.get_local_rank()])
    kwargs.setdefault("broadcast_buffers", False)
    return DistributedDataParallel(model, **kwargs)


class OVSSTrainer(DefaultTrainer):
    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, find_unused_parameters=cfg.MODEL.FIND_UNUSED_PARAMETERS)
        self._trainer = OVSSTrainLoop(model, data_loader, optimizer, amp=cfg.SOLVER.AMP.ENABLED,
                                      amp_dtype=cfg.SOLVER.AMP.DTYPE, seed=cfg.SEED)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = OVSSCheckpointer(model, cfg.OUTPUT_DIR, strict=cfg.MODEL.WEIGHTS_STRICT,
                                             trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    # ---- building blocks ---------------------------------------------------------------------
    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_optimizer(cfg, model)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)  # ours (lr_scheduler.py) or detectron2's

    @classmethod
    def build_train_loader(cls, cfg, start_iter: int = 0):
        return build_train_loader(cfg, build_train_mapper(cfg), start_iter=start_iter)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return build_test_loader(cfg, dataset_name, SemSegDatasetMapper(cfg, is_train=False))

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", "sem_seg")
        if evaluator_type != "sem_seg":
            raise NotImplementedError(f"No evaluator for type {evaluator_type!r} of dataset {dataset_name}.")
        return DatasetEvaluators([OpenVocabSemSegEvaluator(dataset_name, True, output_folder)])

    # ---- evaluation ----------------------------------------------------------------------------
    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate on every DATASETS.TEST dataset with that dataset's own vocabulary."""
        if evaluators is not None and len(evaluators) != len(cfg.DATASETS.TEST):
            raise ValueError(f"{len(evaluators)} evaluators for {len(cfg.DATASETS.TEST)} test datasets")
        results = OrderedDict()
        for idx, name in enumerate(cfg.DATASETS.TEST):
            unwrap(model).use_dataset(name, cfg.TEST.DATASET_SETTINGS)
            loader = cls.build_test_loader(cfg, name)
            evaluator = evaluators[idx] if evaluators is not None else cls.build_evaluator(cfg, name)
            results[name] = inference_on_dataset(model, loader, evaluator)
            if comm.is_main_process():
                logger.info(f"Evaluation results for {name} in csv format:")
                print_csv_format(results[name])
        return list(results.values())[0] if len(results) == 1 else results

    @classmethod
    def evaluate(cls, cfg, resume: bool = False):
        """``--eval-only``: build the model, load MODEL.WEIGHTS (or OUTPUT_DIR's last checkpoint with
        ``resume``), give every process the same weights and evaluate on DATASETS.TEST. A checkpoint
        holds the whole model, so the initial CLIP weights (MODEL.CLIP.PRETRAINED) are not needed.

        A model with trainable parts and no checkpoint (MODEL.WEIGHTS empty, no ``resume``) is
        refused: it would evaluate randomly initialised layers. ``MODEL.WEIGHTS none`` evaluates
        the initial model on purpose; a training-free model needs no weights."""
        weights = os.path.join(cfg.OUTPUT_DIR, "last_checkpoint") if resumes(cfg, resume) else cfg.MODEL.WEIGHTS
        build_cfg = cfg.clone()
        build_cfg.defrost()
        skip_initial_clip_weights(build_cfg, weights).freeze()
        model = cls.build_model(build_cfg)
        if not weights and any(p.requires_grad for p in model.parameters()):
            raise ValueError(
                f"--eval-only without MODEL.WEIGHTS: this {cfg.MODEL.META_ARCHITECTURE} model has trainable parts, "
                "which would be evaluated at their random initialisation. Give the trained checkpoint "
                "(MODEL.WEIGHTS OUTPUT_DIR/model_final.pth), --resume to use OUTPUT_DIR's last checkpoint, or "
                "MODEL.WEIGHTS none to evaluate the untrained model on purpose.")
        OVSSCheckpointer(model, save_dir=cfg.OUTPUT_DIR, strict=cfg.MODEL.WEIGHTS_STRICT).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=resume)
        return cls.test(cfg, create_ddp_model(model))

    # ---- resume --------------------------------------------------------------------------------
    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        if self.start_iter > 0:  # continue the data stream where the checkpoint left it
            self._trainer.set_data_loader(self.build_train_loader(self.cfg, start_iter=self.start_iter))

    def state_dict(self):
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        ret["config"] = self.cfg.dump()  # a resume with another config names the keys that changed
        return ret

    def load_state_dict(self, state_dict):
        """Restore the progress of a checkpoint; the current config's solver settings stay in force
        (a warning names the keys that differ from the checkpoint's config: engine/resume.py)."""
        current = solver_settings(self._trainer.optimizer, self.scheduler)
        super().load_state_dict(state_dict)
        self._trainer.load_state_dict(state_dict["_trainer"])
        differed = apply_current_settings(self._trainer.optimizer, self.scheduler, current)
        if comm.is_main_process():
            warn_about_changes(state_dict.get("config"), self.cfg, differed, getattr(self.checkpointer, "_path", ""))
