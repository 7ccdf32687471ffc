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
