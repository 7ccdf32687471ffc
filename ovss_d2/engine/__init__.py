from .launch import launch
from .optimizer import build_optimizer, build_param_groups
from .setup import check_datasets, check_weights_file, load_config, resolve_device, setup, skip_initial_clip_weights
from .train_loop import OVSSTrainLoop
from .trainer import OVSSTrainer, create_ddp_model, unwrap

__all__ = ["launch", "build_optimizer", "build_param_groups", "OVSSTrainLoop", "OVSSTrainer",
           "create_ddp_model", "unwrap", "load_config", "check_datasets", "check_weights_file", "resolve_device",
           "setup", "skip_initial_clip_weights"]
