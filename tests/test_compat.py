import subprocess
import sys

import numpy as np
import PIL.Image
import torch

import ovss_d2
from ovss_d2 import compat


def test_pillow_alias_lets_detectron2_import():
    assert PIL.Image.LINEAR == PIL.Image.BILINEAR
    from detectron2.data.transforms import ExtentTransform  # uses Image.LINEAR as a default

    assert ExtentTransform is not None


def test_environment_info_works_without_operators():
    from detectron2.utils.collect_env import collect_env_info

    assert "detectron2" in collect_env_info()


def test_import_in_a_fresh_interpreter_registers_everything():
    code = ("import ovss_d2; from detectron2.modeling import META_ARCH_REGISTRY; "
            "print(META_ARCH_REGISTRY.get('CLIPDenseBaseline').__name__, ovss_d2.compat.DETECTRON2_VERSION)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[0] == "CLIPDenseBaseline"


def test_resize_of_16_bit_labels_is_exact():
    """detectron2 resizes non-uint8 label maps as float: labels above 255 survive."""
    from detectron2.data import transforms as T

    label = np.arange(300 * 4, dtype=np.float32).reshape(30, 40) % 847
    out = T.ResizeTransform(30, 40, 60, 80, PIL.Image.NEAREST).apply_segmentation(label)
    assert set(np.unique(out)) <= set(np.unique(label)) and out.max() > 255


def test_versions():
    assert ovss_d2.__version__ and compat.DETECTRON2_VERSION
    assert torch.__version__
