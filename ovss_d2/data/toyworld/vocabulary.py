"""ToyWorld's vocabulary: textured "stuff" and coloured shapes, some held out as unseen.

Every word of an unseen class appears in seen classes ("green star" is unseen, "green circle"
and "red star" are seen), so a text encoder can compose its embedding."""
from typing import Dict, List, Tuple

STUFF: Tuple[str, ...] = ("grass", "sand", "water", "sky", "wall")
COLORS: Dict[str, Tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (40, 200, 50),
    "blue": (35, 70, 235),
    "yellow": (245, 215, 30),
    "purple": (150, 45, 200),
}
SHAPES: Tuple[str, ...] = ("circle", "square", "triangle", "star")
UNSEEN_OBJECTS: Tuple[str, ...] = (
    "green star", "blue triangle", "red square", "yellow circle", "purple triangle",
)
OBJECTS: Tuple[str, ...] = tuple(f"{c} {s}" for c in COLORS for s in SHAPES)
ALL_CLASSES: Tuple[str, ...] = STUFF + OBJECTS
SEEN_CLASSES: Tuple[str, ...] = tuple(c for c in ALL_CLASSES if c not in UNSEEN_OBJECTS)
UNSEEN_CLASSES: Tuple[str, ...] = UNSEEN_OBJECTS


def class_id(name: str, vocabulary: Tuple[str, ...] = ALL_CLASSES) -> int:
    return vocabulary.index(name)


def check_vocabulary() -> List[str]:
    """Problems with the split (empty when sound): each unseen word must be seen elsewhere."""
    problems = []
    seen_words = {w for c in SEEN_CLASSES for w in c.split()}
    for c in UNSEEN_CLASSES:
        for w in c.split():
            if w not in seen_words:
                problems.append(f"word {w!r} of unseen class {c!r} is in no seen class")
    return problems
