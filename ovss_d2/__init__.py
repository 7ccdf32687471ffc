"""ovss-d2: open-vocabulary semantic segmentation as a Detectron2 extension.

Importing the package applies the detectron2 compatibility shims (`ovss_d2.compat`), registers
every meta-architecture into detectron2's ``META_ARCH_REGISTRY``, imports ToyWorld (which adds its
datasets and the ``toyworld`` CLIP weights tag) and registers the built-in datasets.
"""
from . import compat  # noqa: F401  (must run before anything imports detectron2)
from .config import add_ovss_config
from . import data, evaluation, modeling  # noqa: F401  (registration side effects)
from . import toyworld  # noqa: F401  (on top of the library: its datasets and weights tag)
from .data.datasets import register_builtin_datasets

register_builtin_datasets()

__version__ = "0.1.0"

__all__ = ["add_ovss_config", "__version__"]
