"""The config split: the shared part and one ``add_<method>_config`` per method add disjoint keys whose
union is ``add_ovss_config``'s, and each method adds keys under its own nodes only."""
from typing import Callable, Dict

import pytest
from detectron2.config import CfgNode, get_cfg

from ovss_d2.config import METHOD_CONFIGS, add_ovss_config, add_shared_config
from ovss_d2.engine.resume import flatten

# Keys a method adds outside MODEL.<METHOD>: the input keys of its own mapper.
MAPPER_KEYS = {"ZEROSEG": ("INPUT.CENTER_CROP_SIZE",), "VIL_SEG": ("INPUT.VIL_SEG.",)}


def _added(add: Callable[[CfgNode], None]) -> Dict[str, object]:
    """The leaves ``add`` sets on a fresh detectron2 config: new keys and changed defaults."""
    before, cfg = flatten(get_cfg()), get_cfg()
    add(cfg)
    return {k: v for k, v in flatten(cfg).items() if k not in before or before[k] != v}


def _owned(method: str, key: str) -> bool:
    return key.startswith(f"MODEL.{method}.") or key.startswith(MAPPER_KEYS.get(method, ()))


@pytest.mark.parametrize("method", sorted(METHOD_CONFIGS))
def test_method_config_adds_only_its_own_keys(method):
    added = _added(METHOD_CONFIGS[method])
    assert added, f"add config of {method} adds no key"
    assert [k for k in added if not _owned(method, k)] == []


def test_shared_config_adds_no_method_key():
    assert [k for k in _added(add_shared_config) if any(_owned(m, k) for m in METHOD_CONFIGS)] == []


def test_split_is_disjoint_and_its_union_is_the_whole():
    parts = [_added(add_shared_config)] + [_added(add) for add in METHOD_CONFIGS.values()]
    union = {}
    for part in parts:
        assert not union.keys() & part.keys()
        union.update(part)
    assert union == _added(add_ovss_config)
