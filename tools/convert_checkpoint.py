#!/usr/bin/env python
"""Convert an official checkpoint (SED, ERR-Seg) to ovss-d2's layout.

    python tools/convert_checkpoint.py official_sed_model.pth output/sed_b_ovss.pth \
        --config-file configs/sed/sed_convnext_b_768.yaml

The checkpointer converts on the fly as well (MODEL.WEIGHTS may point at the official file);
converting once saves the work at every load. Every official key must map (an unknown one is an
error naming it); with ``--config-file`` the result is also checked against the built model: every
model tensor must be set, with its shape.

The input is read as data only (tensors, numbers, containers: a file holding other Python objects,
which could run code when unpickled, is refused). The output must be another file than the input;
it is written to a temporary file beside it and renamed, so a full disk or an interruption leaves
no partial output.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ovss_d2  # noqa: E402,F401

from ovss_d2.checkpoint import (CHECKPOINT_CONVERTERS, CheckpointReadError, UnsafeCheckpointError,  # noqa: E402
                                convert_state_dict, load_checkpoint_file, save_atomically)


def same_file(a: str, b: str) -> bool:
    if os.path.exists(a) and os.path.exists(b):
        return os.path.samefile(a, b)
    return os.path.realpath(a) == os.path.realpath(b)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input")
    parser.add_argument("output")
    parser.add_argument("--config-file", default="", help="check the result against this config's model")
    args = parser.parse_args(argv)
    if not os.path.isfile(args.input):
        sys.exit(f"input {args.input} not found (or not a file): give the downloaded official checkpoint.")
    if same_file(args.input, args.output):
        sys.exit(f"output {args.output} is the input: the conversion keeps only the model's tensors, so writing over "
                 "the input would lose its other contents. Give another output file.")
    if os.path.isdir(args.output):
        sys.exit(f"output {args.output} is a folder: give a file name, e.g. {os.path.join(args.output, 'model.pth')}.")
    try:
        ckpt = load_checkpoint_file(args.input)
    except (UnsafeCheckpointError, CheckpointReadError) as e:
        sys.exit(str(e))
    state_dict = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    if not isinstance(state_dict, dict):
        sys.exit(f"{args.input} holds a {type(state_dict).__name__}, not a state dict: give an official checkpoint.")
    converted = convert_state_dict(state_dict)
    if converted is state_dict:
        sys.exit(f"{args.input}: no known official layout ({len(CHECKPOINT_CONVERTERS)} converters tried).")
    if args.config_file:
        from ovss_d2.engine import OVSSTrainer, load_config

        cfg = load_config(args.config_file, ["MODEL.CLIP.PRETRAINED", "none", "DATASETS.TRAIN", "()",
                                             "DATASETS.TEST", "()", "MODEL.DEVICE", "cpu"])
        OVSSTrainer.build_model(cfg).load_state_dict(converted, strict=True)
        print(f"checked against {args.config_file}: all {len(converted)} tensors match")
    try:
        save_atomically({"model": converted, "__author__": "converted by ovss-d2 tools/convert_checkpoint.py"},
                        args.output)
    except (OSError, RuntimeError) as e:  # torch's zip writer reports a failed write as a RuntimeError
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        sys.exit(f"cannot write {args.output} ({reason}): nothing was written. Free space or give an output "
                 "in a writable folder.")
    print(f"wrote {args.output} ({len(converted)} tensors)")


if __name__ == "__main__":
    main()
