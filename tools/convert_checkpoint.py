#!/usr/bin/env python
"""Convert an official checkpoint (SED, ERR-Seg) to ovss-d2's layout.

    python tools/convert_checkpoint.py official_sed_model.pth output/sed_b_ovss.pth \
        --config-file configs/sed/sed_convnext_b_768.yaml

The checkpointer converts on the fly as well (MODEL.WEIGHTS may point at the official file);
converting once saves the work at every load. Every official key must map (an unknown one is an
error naming it); with ``--config-file`` the result is also checked against the built model: every
model tensor must be set, with its shape.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovss_d2  # noqa: E402,F401
import torch  # noqa: E402

from ovss_d2.checkpoint import CHECKPOINT_CONVERTERS, convert_state_dict  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--config-file", default="", help="check the result against this config's model")
    args = parser.parse_args()
    ckpt = torch.load(args.input, map_location="cpu", weights_only=False)
    state_dict = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    converted = convert_state_dict(state_dict)
    if converted is state_dict:
        sys.exit(f"{args.input}: no known official layout ({len(CHECKPOINT_CONVERTERS)} converters tried).")
    if args.config_file:
        from ovss_d2.engine import OVSSTrainer, load_config

        cfg = load_config(args.config_file, ["MODEL.CLIP.PRETRAINED", "none", "DATASETS.TRAIN", "()",
                                             "DATASETS.TEST", "()", "MODEL.DEVICE", "cpu"])
        OVSSTrainer.build_model(cfg).load_state_dict(converted, strict=True)
        print(f"checked against {args.config_file}: all {len(converted)} tensors match")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    torch.save({"model": converted, "__author__": "converted by ovss-d2 tools/convert_checkpoint.py"}, args.output)
    print(f"wrote {args.output} ({len(converted)} tensors)")


if __name__ == "__main__":
    main()
