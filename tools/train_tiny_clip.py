#!/usr/bin/env python
"""Train a tiny CLIP contrastively on ToyWorld's caption corpus and report its zero-shot accuracy.

    python tools/train_tiny_clip.py [--model ovss-tiny-convnext] [--steps N] [--holdout test|dev]
                                    [--output PATH]

The checkpoint is an ordinary open_clip training checkpoint; by default it goes to the cache
(where ``MODEL.CLIP.PRETRAINED toyworld`` finds it) and is reused when it exists. The report
(object crops and stride-32 cells of toyworld_val and toyworld_wide_val, seen / unseen) is printed
and written next to it as JSON. ``--holdout dev`` also removes the development pairs from the
corpus and reports them as the unseen classes: the protocol the training settings were chosen by.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ovss_d2  # noqa: E402,F401
from ovss_d2.toyworld import tiny_clip  # noqa: E402
from toyworld_table import clip_lines, clip_report  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ovss-tiny-convnext", help="open_clip config of a ConvNeXt CLIP")
    parser.add_argument("--steps", type=int, default=tiny_clip.TRAIN_SETTINGS["steps"])
    parser.add_argument("--holdout", choices=["test", "dev"], default="test")
    parser.add_argument("--output", default="", help="checkpoint path (default: the cache)")
    parser.add_argument("--no-eval", action="store_true", help="skip the zero-shot evaluation")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in (("steps", args.steps), ("holdout", args.holdout))
                 if v != tiny_clip.TRAIN_SETTINGS[k]}
    start = time.time()
    path = tiny_clip.train_tiny_clip(args.model, out_path=args.output or None, **overrides)
    print(f"tiny CLIP checkpoint: {path} ({time.time() - start:.0f}s)")
    if args.no_eval:
        return path
    if args.holdout == "dev":
        model, tokenizer = tiny_clip.load_tiny_clip(path)
        report = {f"{k}_val": fn(model, tokenizer, split="val", unseen=tiny_clip.DEV_HELD_OUT)
                  for k, fn in (("crops", tiny_clip.zero_shot_crop_accuracy), ("cells", tiny_clip.dense_cell_accuracy))}
        print("development pairs as the unseen classes:")
        print(json.dumps(report, indent=1))
        return path
    print("zero-shot accuracy (prompt \"a photo of a {}.\" for every class of the set):")
    print("\n".join(clip_lines(clip_report(path))))
    return path


if __name__ == "__main__":
    main()
