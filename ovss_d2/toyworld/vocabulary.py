"""ToyWorld's vocabulary: a compositional world of coloured, patterned shapes and stuff.

Every object class is a colour x pattern pair ("red striped shape"; the outline of an object, a
circle, a star, ..., varies freely and names no class), every wall a colour x "wall"; the natural
stuff classes are single words. Patterns, like colours and the stuff textures, are visible in any
small part of an object, which is what dense features at a 32-pixel stride can see; an outline is
not. Some pairs are held out of every training set (segmentation masks, the tiny CLIP's captions,
ZeroSeg's and ViL-Seg's images): the **unseen** classes. Each of their words is seen in many other
pairs, so a model that composes colour and pattern can name them.

Three vocabularies, in the spirit of COCO-Stuff -> ADE20K:

* ``TRAIN_CLASSES`` (31): what the segmentation training labels name (``toyworld_train``);
* ``VAL_CLASSES`` (38): the training vocabulary plus its held-out pairs, 6 objects and one wall
  (``toyworld_val``; ``VAL_UNSEEN``);
* ``WIDE_CLASSES`` (68): a larger world with two more colours, two more patterns, two more natural
  stuff classes and more walls (``toyworld_wide_val``). The tiny CLIP's captions describe this
  whole world (except the held-out pairs), the segmentation labels only ``TRAIN_CLASSES``:
  ``WIDE_UNSEEN`` is every class without a training mask (37).
"""
from typing import Dict, List, Tuple

COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "orange": (245, 140, 25),
    "yellow": (245, 220, 30),
    "green": (40, 190, 50),
    "blue": (35, 70, 235),
    "purple": (150, 45, 205),
    "pink": (250, 125, 200),
    "white": (245, 245, 245),
}
BASE_COLORS: Tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple")
PATTERNS: Tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "zigzag", "hatched", "spotted")
BASE_PATTERNS: Tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "zigzag")
OBJECT_NOUN = "shape"
# Outlines objects are drawn with (any class, any outline).
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "heart", "ring")
NATURAL_STUFF: Tuple[str, ...] = ("sky", "grass", "sand", "water", "snow", "road")
BASE_NATURAL_STUFF: Tuple[str, ...] = ("sky", "grass", "sand", "water")
WALL_COLORS: Tuple[str, ...] = ("red", "yellow", "blue", "green", "white", "pink")
BASE_WALL_COLORS: Tuple[str, ...] = ("red", "yellow", "blue", "green")


def object_class(colour: str, pattern: str) -> str:
    return f"{colour} {pattern} {OBJECT_NOUN}"


# Held out of every training set. Each base colour and each base pattern is in at most two pairs.
HELD_OUT_OBJECTS: Tuple[str, ...] = tuple(object_class(c, p) for c, p in (
    ("red", "striped"), ("orange", "dotted"), ("yellow", "checkered"), ("green", "plain"), ("blue", "zigzag"),
    ("purple", "dotted"), ("pink", "hatched"), ("white", "spotted")))
HELD_OUT_STUFF: Tuple[str, ...] = ("green wall",)
HELD_OUT: Tuple[str, ...] = HELD_OUT_OBJECTS + HELD_OUT_STUFF

OBJECTS: Tuple[str, ...] = tuple(object_class(c, p) for c in COLORS for p in PATTERNS)
WALLS: Tuple[str, ...] = tuple(f"{c} wall" for c in WALL_COLORS)
STUFF: Tuple[str, ...] = NATURAL_STUFF + WALLS

BASE_OBJECTS: Tuple[str, ...] = tuple(object_class(c, p) for c in BASE_COLORS for p in BASE_PATTERNS)
BASE_STUFF: Tuple[str, ...] = BASE_NATURAL_STUFF + tuple(f"{c} wall" for c in BASE_WALL_COLORS)

VAL_CLASSES: Tuple[str, ...] = BASE_STUFF + BASE_OBJECTS
TRAIN_CLASSES: Tuple[str, ...] = tuple(c for c in VAL_CLASSES if c not in HELD_OUT)
VAL_UNSEEN: Tuple[str, ...] = tuple(c for c in VAL_CLASSES if c in HELD_OUT)
WIDE_CLASSES: Tuple[str, ...] = STUFF + OBJECTS
WIDE_UNSEEN: Tuple[str, ...] = tuple(c for c in WIDE_CLASSES if c not in TRAIN_CLASSES)

# What the tiny CLIP's captions (and the caption / unlabeled image sets) may show: the wide world
# without the held-out pairs.
CAPTION_CLASSES: Tuple[str, ...] = tuple(c for c in WIDE_CLASSES if c not in HELD_OUT)


def split_name(name: str) -> Tuple[str, str]:
    """(colour, kind) of a class: ("red", "striped") for "red striped shape", ("green", "wall"),
    ("", "sky")."""
    words = name.split()
    return (words[0], words[1]) if len(words) >= 2 else ("", name)


def is_object(name: str) -> bool:
    return name.endswith(" " + OBJECT_NOUN)


def check_vocabulary() -> List[str]:
    """Problems with the splits (empty when sound): every attribute of a held-out class must occur
    in at least two training classes, and in at least two caption classes."""
    problems = []
    for pool_name, pool in (("training", TRAIN_CLASSES), ("caption", CAPTION_CLASSES)):
        counts: Dict[str, int] = {}
        for c in pool:
            for w in split_name(c):
                counts[w] = counts.get(w, 0) + 1
        for c in HELD_OUT:
            if pool_name == "training" and c not in VAL_CLASSES:
                continue
            for w in split_name(c):
                if counts.get(w, 0) < 2:
                    problems.append(f"word {w!r} of held-out class {c!r} is in {counts.get(w, 0)} {pool_name} classes")
    return problems
