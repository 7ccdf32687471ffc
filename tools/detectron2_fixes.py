#!/usr/bin/env python
"""Upstream detectron2's own later fixes for Pillow >= 10 and NumPy >= 1.24, applied to the v0.6
sources that ``tools/install_env.sh`` builds, so that build works in any script in any import
order (``import detectron2`` before ``import ovss_d2`` included) and detectron2's own
``SemSegEvaluator`` runs.

    python tools/detectron2_fixes.py apply SRC_DIR   # patch unpacked sources in place, list the files
    python tools/detectron2_fixes.py state           # the importable detectron2: ok | missing |
                                                     # unpatched-ours | unpatched-other

The fixes are upstream's, as regular expressions over every ``.py`` file (upstream made them the
same mechanical way):

- ``Image.LINEAR`` -> ``Image.BILINEAR`` (Pillow 10 removed the alias; upstream ff53992);
- ``np.bool`` / ``np.int`` / ``np.float`` / ``np.str`` -> the builtins (NumPy 1.24 removed the
  aliases; upstream 857d5de, 027099d, 54dd614, 654570a).

``unpatched-ours`` is a build of ``pb1-detectron2`` inside this environment that predates the
fixes: ``install_env.sh`` rebuilds it. A detectron2 installed some other way is left as it is
(``ovss_d2.compat`` covers Pillow for it).
"""
import os
import re
import sys
from typing import List

FIXES = [
    (re.compile(r"\bImage\.LINEAR\b"), "Image.BILINEAR"),
    (re.compile(r"\bnp\.(bool|int|float|str)\b"), r"\1"),
]
OUR_DISTRIBUTION = "pb1-detectron2"


def fix_source(text: str) -> str:
    for pattern, replacement in FIXES:
        text = pattern.sub(replacement, text)
    return text


def python_files(root: str) -> List[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files if f.endswith(".py"))


def apply(src: str) -> List[str]:
    """Patch every ``.py`` file under ``src`` in place; returns the files changed."""
    changed = []
    for path in python_files(src):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        fixed = fix_source(text)
        if fixed != text:
            with open(path, "w", encoding="utf-8") as f:
                f.write(fixed)
            changed.append(path)
    return changed


def needs_fixes(package_dir: str) -> List[str]:
    """The files of an installed detectron2 that still use what Pillow / NumPy removed."""
    out = []
    for path in python_files(package_dir):
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        if fix_source(text) != text:
            out.append(path)
    return out


def state() -> str:
    import importlib.util
    from importlib import metadata

    spec = importlib.util.find_spec("detectron2")
    if spec is None or not spec.origin:
        return "missing"
    if not needs_fixes(os.path.dirname(spec.origin)):
        return "ok"
    try:
        location = os.path.realpath(str(metadata.distribution(OUR_DISTRIBUTION).locate_file("")))
    except metadata.PackageNotFoundError:
        return "unpatched-other"
    inside = location.startswith(os.path.realpath(sys.prefix) + os.sep)
    return "unpatched-ours" if inside else "unpatched-other"


def main(argv: List[str]) -> int:
    if len(argv) == 2 and argv[0] == "apply":
        for path in apply(argv[1]):
            print(f"[setup] patched {os.path.relpath(path, argv[1])}")
        left = needs_fixes(argv[1])
        if left:
            print(f"[setup] error: still unpatched: {left}", file=sys.stderr)
            return 1
        return 0
    if argv == ["state"]:
        print(state())
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
