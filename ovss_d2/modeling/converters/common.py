"""Regex-table key renaming shared by the converters."""
import re
from typing import Dict, Iterable, Tuple

import torch


class UnmappedKeyError(KeyError):
    """A key of an official checkpoint that no rule of the converter maps."""


def rename_keys(state_dict: Dict[str, torch.Tensor], rules: Iterable[Tuple[str, str]],
                layout: str) -> Dict[str, torch.Tensor]:
    """Rename every key by the first matching ``(pattern, replacement)`` rule (``re.fullmatch``);
    a key that no rule matches is an error naming it."""
    compiled = [(re.compile(p), r) for p, r in rules]
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in compiled:
            m = pattern.fullmatch(key)
            if m:
                out[m.expand(repl)] = value
                break
        else:
            raise UnmappedKeyError(f"Key {key!r} of the {layout} checkpoint maps to no ovss-d2 parameter.")
    return out
