"""Prompt template sets. Every template holds one "{}" for the class name."""
import string
from typing import Dict, List, Sequence, Tuple

# The 80 ImageNet prompt templates of the CLIP paper (SED uses all of them, P = 80). The order is
# the order of the cost map's template axis, which trained decoders depend on: do not reorder.
IMAGENET_80: Tuple[str, ...] = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

TEMPLATE_SETS: Dict[str, Tuple[str, ...]] = {
    "imagenet_80": IMAGENET_80,
    "single_scene": ("A photo of a {} in the scene",),  # ERR-Seg
    "photo_of_a": ("a photo of a {}.",),  # ViL-Seg
    "photo_of_the": (  # ZeroSeg
        "a photo of the {}.",
        "a photo of a {}.",
        "a photo of one {}.",
        "itap of the {}.",
    ),
    "plain": ("{}",),
}


def resolve_templates(name: str, custom: Sequence[str] = ()) -> List[str]:
    """The template list of a config: ``custom`` when given, else the built-in set ``name``."""
    templates = list(custom) if custom else None
    if templates is None:
        if name not in TEMPLATE_SETS:
            raise ValueError(
                f"Unknown prompt template set {name!r} (MODEL.TEXT.TEMPLATES). Built-in sets: "
                f"{sorted(TEMPLATE_SETS)}; or give your own list in MODEL.TEXT.CUSTOM_TEMPLATES."
            )
        templates = list(TEMPLATE_SETS[name])
    validate_templates(templates)
    return templates


def validate_templates(templates: Sequence[str]) -> None:
    """Refuse a template list that would not put each class name into its prompts once: every
    template must hold exactly one replacement field, a plain ``{}`` (``str.format``'s own reading,
    so ``{{}}`` is a literal brace pair, not a field; ``{name}``, ``{0}`` or a lone ``}`` would fail
    or differ at embedding time)."""
    if isinstance(templates, str) or len(templates) == 0:
        raise ValueError("The prompt template list is empty: give at least one template with '{}'."
                         if not templates else f"Expected a list of prompt templates, got the string {templates!r}.")
    for t in templates:
        if not isinstance(t, str):
            raise ValueError(f"Prompt template {t!r} is not a string: give text with one '{{}}' for the class name.")
        try:
            fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(t) if name is not None]
        except ValueError as e:  # e.g. a lone "}" or an unclosed "{"
            raise ValueError(f"Prompt template {t!r} is not a valid format string ({e}): write '{{{{' and '}}}}' for "
                             "literal braces and '{}' once for the class name.") from None
        if fields != [("", "", None)]:
            found = ", ".join("{" + n + ("!" + c if c else "") + (":" + s if s else "") + "}" for n, s, c in fields)
            has = f"{len(fields)} replacement fields, {found}" if len(fields) > 1 else (found or "none")
            raise ValueError(f"Prompt template {t!r} must contain exactly one '{{}}' for the class name; it has "
                             f"{has} ('{{{{' and '}}}}' are literal braces).")
