import os
import sys

import pytest

import ovss_d2  # noqa: F401  (compat shims before any test module imports detectron2)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Text-embedding cache of the test session in a temporary directory."""
    os.environ["OVSS_D2_CACHE"] = str(tmp_path_factory.mktemp("ovss_cache"))
    yield


@pytest.fixture(scope="session")
def small_tiny_clip(tmp_path_factory):
    """(root, checkpoint) of a small ToyWorld and a tiny CLIP trained briefly on its caption corpus,
    shared by the tests of the session."""
    from ovss_d2 import toyworld
    from ovss_d2.toyworld import tiny_clip

    root = str(tmp_path_factory.mktemp("tw_clip") / "w")
    toyworld.generate(root, sizes={"train": 200, "captions": 300, "val": 60, "wide_val": 20}, progress=False)
    out = str(tmp_path_factory.mktemp("c") / "c.pt")
    path = tiny_clip.train_tiny_clip("ovss-tiny-convnext", root=root, out_path=out, progress=False, steps=120,
                                     batch_size=64, region_scenes=6)
    return root, path
