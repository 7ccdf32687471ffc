"""Command-line parsing shared by train_net.py and the demos."""
import argparse
from typing import List, Optional


def parse_args_anywhere(parser: argparse.ArgumentParser, argv: Optional[List[str]] = None,
                        dest: str = "opts") -> argparse.Namespace:
    """``parser.parse_args`` for a parser whose ``dest`` argument (``KEY VALUE`` config overrides)
    is ``argparse.REMAINDER``, accepting flags after the overrides as well: REMAINDER takes
    everything that follows it, so ``--opts K V --output out/`` would read ``--output`` as an
    override. Tokens from the first ``--flag`` on are parsed again as flags (and their own
    overrides); config keys never start with ``--``. ``parser`` must accept an empty command line
    (check required arguments after parsing)."""
    args = parser.parse_args(argv)
    rest = list(getattr(args, dest) or [])
    for i, token in enumerate(rest):
        if token.startswith("--") and len(token) > 2:
            later = parse_args_anywhere(parser, rest[i:], dest)
            defaults = vars(parser.parse_args([]))
            for key, value in vars(later).items():
                if key != dest and value != defaults[key]:
                    setattr(args, key, value)
            setattr(args, dest, rest[:i] + list(getattr(later, dest) or []))
            break
    return args


def add_model_arguments(parser: argparse.ArgumentParser, weights_help: str) -> argparse.ArgumentParser:
    """The arguments of demo/demo.py and demo/app.py that make their Predictor: --config-file,
    --weights, --device, --max-size and --opts (``KEY VALUE`` overrides: parse with
    :func:`parse_args_anywhere`). Returns ``parser``."""
    parser.add_argument("--config-file", help="(required) model config, e.g. configs/toy/sed_toy.yaml")
    parser.add_argument("--weights", default="", help=weights_help)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: the config's)")
    parser.add_argument("--max-size", type=int, default=1024, help="long side of the working resolution")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides KEY VALUE ...; flags may follow them")
    return parser
