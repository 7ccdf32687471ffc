#!/usr/bin/env python
"""Train a tiny CLIP contrastively on ToyWorld and report its zero-shot crop accuracy.

    python tools/train_tiny_clip.py [--model ovss-tiny-convnext] [--steps 1000] [--output PATH]

The checkpoint is an ordinary open_clip training checkpoint; by default it goes to the cache
(where ``MODEL.CLIP.PRETRAINED toyworld`` finds it) and is reused when it exists. The report
(seen objects, unseen objects, stuff, chance) is printed and written next to it as JSON.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovss_d2  # noqa: E402,F401
from ovss_d2.data.toyworld import tiny_clip  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ovss-tiny-convnext",
                        help="open_clip config (ovss-tiny-convnext, ovss-tiny-vit)")
    parser.add_argument("--steps", type=int, default=tiny_clip.TRAIN_SETTINGS["steps"])
    parser.add_argument("--output", default="", help="checkpoint path (default: the cache)")
    parser.add_argument("--no-eval", action="store_true", help="skip the zero-shot crop evaluation")
    args = parser.parse_args(argv)
    overrides = {"steps": args.steps} if args.steps != tiny_clip.TRAIN_SETTINGS["steps"] else {}
    start = time.time()
    path = tiny_clip.train_tiny_clip(args.model, out_path=args.output or None, **overrides)
    print(f"tiny CLIP checkpoint: {path} ({time.time() - start:.0f}s)")
    if args.no_eval:
        return path
    report_path = os.path.splitext(path)[0] + ".zero_shot.json"
    if os.path.isfile(report_path):
        with open(report_path) as f:
            report = json.load(f)
    else:
        model, tokenizer = tiny_clip.load_tiny_clip(path)
        report = tiny_clip.zero_shot_crop_accuracy(model, tokenizer)
        with open(report_path, "w") as f:
            json.dump(report, f, indent=1)
    print("zero-shot crop accuracy on ToyWorld val (all 25 class prompts):")
    print(f"  seen objects   {report['seen_objects']:5.1f}%  ({report['n_seen_objects']} crops)")
    print(f"  unseen objects {report['unseen_objects']:5.1f}%  ({report['n_unseen_objects']} crops)")
    print(f"  stuff          {report['stuff']:5.1f}%  ({report['n_stuff']} crops)")
    print(f"  chance         {report['chance']:5.1f}%")
    return path


if __name__ == "__main__":
    main()
