#!/usr/bin/env python
"""Precompute ZeroSeg's teacher features (CLIP embeddings of the whole image and of its grid cells)
for the training dataset, in shards; run it again after an interruption to finish the missing shards,
or when training names a truncated or damaged shard: only those are computed again.

    python tools/cache_teacher_features.py --config-file configs/zeroseg/zeroseg_vitb16_in1k.yaml \\
        [--num-gpus 8] [--dataset NAME] [--shard-size 1024] [--batch-size 64] \\
        MODEL.ZEROSEG.TEACHER_CACHE datasets/zeroseg_teacher_in1k

Then train with the same MODEL.ZEROSEG.TEACHER_CACHE. The cache records the teacher, the grids,
the crop size and the image list; training refuses a cache that does not match its config.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovss_d2  # noqa: E402,F401
from ovss_d2.engine import load_config  # noqa: E402
from ovss_d2.engine.launch import launch  # noqa: E402
from ovss_d2.engine.teacher_features import build_teacher_cache  # noqa: E402


def run(args):
    from detectron2.utils.logger import setup_logger

    setup_logger(name="ovss_d2")
    cfg = load_config(args.config_file, args.opts)
    output = cfg.MODEL.ZEROSEG.TEACHER_CACHE
    if not output:
        raise SystemExit("Give the cache directory: ... MODEL.ZEROSEG.TEACHER_CACHE <dir>")
    done = build_teacher_cache(cfg, output, args.dataset or None, args.shard_size, args.batch_size,
                               args.max_shards)
    print(f"teacher-feature cache {output}: {'complete' if done else 'incomplete (run again to finish)'}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--dataset", default="", help="registered dataset (default: DATASETS.TRAIN[0])")
    parser.add_argument("--shard-size", type=int, default=1024, help="images per shard file")
    parser.add_argument("--batch-size", type=int, default=64, help="images per teacher batch (x views)")
    parser.add_argument("--max-shards", type=int, default=None, help="stop after this many new shards")
    parser.add_argument("--num-gpus", type=int, default=1, help="processes (GPUs; CPU processes without CUDA)")
    parser.add_argument("--dist-url", default="auto")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    launch(run, args.num_gpus, dist_url=args.dist_url, args=(args,))


if __name__ == "__main__":
    main()
