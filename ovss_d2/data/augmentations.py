"""Training augmentations taken from detectron2 where it keeps them outside ``detectron2.data``."""
from fvcore.transforms.transform import Transform

POINT_REND_FIX = (
    "Install detectron2 so that its projects are importable: a source build "
    "(`pip install 'git+https://github.com/facebookresearch/detectron2.git'`, or `pip install -e .` in a "
    "detectron2 checkout) installs detectron2/projects/PointRend as detectron2.projects.point_rend; "
    "tools/install_env.sh does the same from the pb1-detectron2 sdist. Or set INPUT.COLOR_AUG_SSD False."
)


def color_aug_ssd(img_format: str = "RGB") -> Transform:
    """detectron2's ``ColorAugSSDTransform`` (``detectron2.projects.point_rend``), the colour
    augmentation the SED / ERR-Seg / CAT-Seg mappers append for ``INPUT.COLOR_AUG_SSD``: on an
    (H, W, 3) uint8 image, brightness +-32, contrast and saturation x[0.5, 1.5], hue +-18 in
    OpenCV's 0-180 hue units (+-36 degrees), each with probability 1/2, drawn from Python's
    ``random`` when the image is transformed (seeded per sample by the training loader). Labels
    and geometry are untouched. ``img_format`` is the channel order of the images it receives
    (our mappers read RGB).

    Raises ImportError naming the fix when detectron2 was installed without its projects."""
    try:
        from detectron2.projects.point_rend import ColorAugSSDTransform
    except ImportError as e:
        raise ImportError(f"INPUT.COLOR_AUG_SSD uses detectron2's ColorAugSSDTransform from "
                          f"detectron2.projects.point_rend, which this detectron2 installation lacks ({e}). "
                          f"{POINT_REND_FIX}") from e
    return ColorAugSSDTransform(img_format=img_format)
