"""Vocabularies as users give them (a list, "a,b,c", a text file, ``dataset:NAME``): parsed and
checked, with errors that name the fix and a warning for duplicated names."""
import os
import re
import warnings
from typing import Dict, Iterable, List, Sequence, Tuple

DATASET_PREFIX = "dataset:"
UTF8_BOM = b"\xef\xbb\xbf"
# A --vocabulary value without a comma that ends like this is meant as a file.
FILE_SUFFIXES = (".txt", ".csv", ".tsv", ".json", ".yaml", ".yml", ".names", ".lst", ".list", ".labels", ".vocab")


class DuplicateClassWarning(UserWarning):
    """The vocabulary names a class twice: its pixels all go to the first occurrence."""


def dataset_vocabulary(name: str) -> List[str]:
    """The class names (``stuff_classes``) of a registered dataset: a model's training and test
    vocabularies, the demos' ``dataset:NAME``."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if not name:  # detectron2's catalogs assert a non-empty name
        raise ValueError(f"{DATASET_PREFIX} names no dataset: write {DATASET_PREFIX}NAME with a registered dataset, "
                         f"e.g. {DATASET_PREFIX}toyworld_val.")
    names = getattr(MetadataCatalog.get(name), "stuff_classes", None)
    if names:
        return list(names)
    registered = DatasetCatalog.list()
    if name not in registered:
        named = sorted(d for d in registered if getattr(MetadataCatalog.get(d), "stuff_classes", None))
        raise KeyError(f"dataset:{name}: no registered dataset {name!r}. Datasets with class names: "
                       f"{', '.join(named) or 'none'} (register yours with ovss_d2.data.register_sem_seg_dataset).")
    raise ValueError(f"Dataset {name!r} has no class names ('stuff_classes' in its metadata): register it with its "
                     "class names (ovss_d2.data.register_sem_seg_dataset), or name the classes yourself.")


def _vocabulary_lines(lines: Iterable[str]) -> List[str]:
    """The rule of :func:`read_vocabulary_file`, also that of a text of several lines."""
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def read_vocabulary_file(path: str) -> List[str]:
    """One class per line (a line may hold synonyms, ``person, people``); blank lines and ``#``
    comments are skipped. The file is UTF-8, with or without a byte-order mark (Windows editors
    write one; it is not part of the first name); other encodings are refused with the offset of
    the first byte that is not UTF-8."""
    with open(path, "rb") as f:
        data = f.read()
    start = len(UTF8_BOM) if data.startswith(UTF8_BOM) else 0
    try:
        text = data[start:].decode("utf-8")
    except UnicodeDecodeError as e:
        offset = start + e.start
        line = data[:offset].count(b"\n") + 1
        utf16 = " (it starts with a UTF-16 byte-order mark)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ValueError(f"Vocabulary file {path} is not UTF-8 text{utf16}: byte 0x{data[offset]:02x} at offset "
                         f"{offset} (line {line}) is not valid UTF-8. Save it as UTF-8 (e.g. iconv -f latin1 -t utf-8 "
                         f"{path} > classes_utf8.txt, naming the file's real encoding).") from None
    names = _vocabulary_lines(text.splitlines())
    if not names:
        raise ValueError(f"Vocabulary file {path} holds no class name: write one class per line.")
    return names


def _looks_like_file(spec: str) -> bool:
    """Whether a one-line vocabulary is meant as a file name (a path, or a name with a file
    suffix, and no comma) rather than a class."""
    return (not spec.startswith(DATASET_PREFIX) and "," not in spec
            and (os.sep in spec or "/" in spec or spec.lower().endswith(FILE_SUFFIXES)))


def parse_vocabulary(spec: str) -> List[str]:
    """``"a,b,c"``, a text file (one class per line) or ``dataset:<registered dataset>`` -> class
    names, checked by :func:`check_vocabulary`. A value that looks like a file name but is no file
    is an error (it would otherwise become one class named after the path)."""
    spec = spec.strip()
    if not spec.startswith(DATASET_PREFIX):
        if os.path.isfile(spec):
            return check_vocabulary(read_vocabulary_file(spec))
        if os.path.isdir(spec):
            raise IsADirectoryError(f"Vocabulary {spec!r} is a folder: give a text file (one class per line) or "
                                    "comma-separated class names.")
        if _looks_like_file(spec):
            raise FileNotFoundError(f"Vocabulary file {spec!r} not found: give an existing file (one class per "
                                    "line) or comma-separated class names such as 'cat,dog,grass'.")
    return _parse_line(spec)


def parse_vocabulary_text(text: str) -> List[str]:
    """Class names typed in a text box (the web demo's) -> class names, checked by
    :func:`check_vocabulary`. Several lines are read as a vocabulary file is (one class per line,
    synonyms ``person, people``, ``#`` comments); one line as :func:`parse_vocabulary` reads it
    (``"a,b,c"`` or ``dataset:<registered dataset>``), except that a text never names a file: the
    file system is not touched, and a line that looks like a file name is an error."""
    text = text.strip()
    lines = text.splitlines()
    if len(lines) > 1:
        return check_vocabulary(_vocabulary_lines(lines))
    if _looks_like_file(text):
        raise ValueError(f"{text!r} looks like a file name, and a text box does not read files: type the class "
                         "names themselves (end a single name with a comma).")
    return _parse_line(text)


def _parse_line(spec: str) -> List[str]:
    """``dataset:<registered dataset>`` or comma-separated names, checked."""
    if spec.startswith(DATASET_PREFIX):
        return check_vocabulary(dataset_vocabulary(spec[len(DATASET_PREFIX):].strip()))
    return check_vocabulary([c.strip() for c in spec.split(",") if c.strip()])


def _key(name: str) -> str:
    # CLIP's tokenizer lowercases and collapses whitespace: these names embed identically
    return re.sub(r"\s+", " ", name.strip().lower())


def deduplicate(class_names: Sequence[str]) -> Tuple[List[str], List[int]]:
    """(the names without repeats, first spelling kept; for each given name, the index of its
    unique name). Case and spacing are ignored, as CLIP's tokenizer ignores them."""
    unique, index, positions = [], {}, []
    for name in class_names:
        key = _key(name)
        if key not in index:
            index[key] = len(unique)
            unique.append(name)
        positions.append(index[key])
    return unique, positions


def check_vocabulary(class_names: Sequence[str], warn_duplicates: bool = True) -> List[str]:
    """The class names as a list, refusing what cannot be meant (a single string, an empty list, an
    empty or non-string name) and, with ``warn_duplicates``, warning (:class:`DuplicateClassWarning`)
    about names that occur twice (case and spacing ignored). The order, duplicates included, is
    kept: class ids are positions in the list the user gave (the Predictor segments each class
    once, see :func:`deduplicate`; models embed every name given, hence no warning there)."""
    if isinstance(class_names, str):
        split = [c.strip() for c in class_names.split(",") if c.strip()]
        raise TypeError(f"The vocabulary must be a list of class names, got the string {class_names!r}: "
                        f"pass {split!r}.")
    try:
        names = list(class_names)
    except TypeError:
        raise TypeError(f"The vocabulary must be a list of class names, got {type(class_names).__name__}.") from None
    if not names:
        raise ValueError("The vocabulary is empty: give at least one class name (e.g. 'cat,dog', a text file "
                         "with one class per line, or dataset:<registered dataset>).")
    for i, n in enumerate(names):
        if not isinstance(n, str) or not n.strip():
            raise ValueError(f"Class name #{i} of the vocabulary is empty or not a string: {n!r}.")
    if not warn_duplicates:
        return names
    unique, positions = deduplicate(names)
    where: Dict[int, List[int]] = {}
    for i, u in enumerate(positions):  # one pass: a vocabulary may hold tens of thousands of names
        where.setdefault(u, []).append(i)
    dups = [f"{unique[u]!r} at positions {', '.join(map(str, at))}" for u, at in where.items() if len(at) > 1]
    if dups:
        warnings.warn(f"The vocabulary names a class more than once ({'; '.join(dups)}): each class is "
                      "segmented once and its pixels get its first id. Remove the duplicates.",
                      DuplicateClassWarning, stacklevel=2)
    return names
