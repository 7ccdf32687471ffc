"""Regex-table key renaming shared by the converters."""
import re
from typing import Callable, Dict, Iterable, Tuple, Union

import torch


class UnmappedKeyError(KeyError):
    """A key of an official checkpoint that no rule of the converter maps."""


def shift_group(template: str, group: int = 1, offset: int = -1) -> Callable[[re.Match], str]:
    """A replacement renumbering one group: the official 1-based ``decoder3`` -> our index 2."""
    def repl(m: re.Match) -> str:
        groups = [m.group(0)] + [g or "" for g in m.groups()]
        groups[group] = str(int(groups[group]) + offset)
        return re.sub(r"\\(\d)", lambda r: groups[int(r.group(1))], template)
    return repl


def rename_keys(state_dict: Dict[str, torch.Tensor], rules: Iterable[Tuple[str, Union[str, Callable]]],
                layout: str) -> Dict[str, torch.Tensor]:
    """Rename every key by the first matching ``(pattern, replacement)`` rule (``re.fullmatch``; a
    replacement is a template or a function of the match); a key that no rule matches is an error
    naming it."""
    compiled = [(re.compile(p), r) for p, r in rules]
    out = {}
    for key, value in state_dict.items():
        for pattern, repl in compiled:
            m = pattern.fullmatch(key)
            if m:
                out[repl(m) if callable(repl) else m.expand(repl)] = value
                break
        else:
            raise UnmappedKeyError(f"Key {key!r} of the {layout} checkpoint maps to no ovss-d2 parameter.")
    return out
