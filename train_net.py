#!/usr/bin/env python
"""Train or evaluate an ovss-d2 model.

    python train_net.py --config-file configs/<method>/<config>.yaml [--num-gpus N] [KEY VALUE ...]
    python train_net.py --config-file ... --eval-only MODEL.WEIGHTS /path/to/model.pth
    python train_net.py --config-file ... --resume          # continue from OUTPUT_DIR/last_checkpoint

Without GPUs, --num-gpus N runs N CPU processes (gloo). Flags may come before or after the KEY VALUE
overrides. --resume skips a corrupt last checkpoint (warning) for the latest intact one, and applies a
changed config (warning naming the keys). MODEL.WEIGHTS must fit the model exactly (MODEL.WEIGHTS_STRICT
False to fine-tune from another model's weights) and is read as data only; --eval-only of a model with
trainable parts needs it (MODEL.WEIGHTS none: evaluate the untrained model on purpose). Refused inputs
and their messages: docs/refused_inputs.md.
"""
import ovss_d2  # noqa: F401  (compat shims + registration; must precede detectron2 imports)
from detectron2.engine import default_argument_parser
from detectron2.utils import comm

from ovss_d2.engine import OVSSTrainer, launch, setup
from ovss_d2.utils.cli import parse_args_anywhere


def main(args):
    cfg = setup(args)
    if args.eval_only:
        results = OVSSTrainer.evaluate(cfg, resume=args.resume)
        if comm.is_main_process():
            from detectron2.evaluation import verify_results

            verify_results(cfg, results)
        return results
    trainer = OVSSTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


if __name__ == "__main__":
    # flags may also follow the KEY VALUE overrides (detectron2's parser would read them as overrides)
    args = parse_args_anywhere(default_argument_parser())
    print("Command Line Args:", args)
    launch(main, args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
           dist_url=args.dist_url, args=(args,))
