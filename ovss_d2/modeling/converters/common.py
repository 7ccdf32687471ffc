"""Regex-table key renaming shared by the converters."""
import re
from typing import Callable, Dict, Iterable, Tuple, Union

import torch

from ...checkpoint import first_few


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
    replacement is a template or a function of the match). Keys that no rule matches are an error
    naming them."""
    compiled = [(re.compile(p), r) for p, r in rules]
    out, unmapped = {}, []
    for key, value in state_dict.items():
        for pattern, repl in compiled:
            m = pattern.fullmatch(key)
            if m:
                out[repl(m) if callable(repl) else m.expand(repl)] = value
                break
        else:
            unmapped.append(key)
    if unmapped:
        raise UnmappedKeyError(f"{len(unmapped)} key(s) of the {layout} checkpoint map to no ovss-d2 parameter: "
                               f"{first_few([repr(k) for k in unmapped], 8)}. Is it a checkpoint of this method, in "
                               "the authors' released layout?")
    return out
