"""The documentation matches the tree.

- DEVELOPERS.md's "Layout" names every folder and module of ``ovss_d2/`` (and the top-level folders),
  and every path it names exists;
- every repository path named in the manual (the method pages, MODEL_ZOO.md, GETTING_STARTED.md, README.md,
  INSTALL.md, ADDING_A_METHOD.md, docs/toyworld.md, ...) exists, and each method page lists its code;
- README.md stays a short manual, and every relative link of the docs resolves, anchors included;
- tools/README.md names every tool.
"""
import fnmatch
import glob
import itertools
import os
import re

import pytest

from helpers import REPO

SKIP_DIRS = {".git", ".venv", "build", "output", "__pycache__", ".pytest_cache", ".ruff_cache", "node_modules"}
TOP_LEVEL = ("configs", "tools", "demo", "tests", "docs")
# (not docs/performance.md: it names files that the benchmark tools write)
PATH_DOCS = ("MODEL_ZOO.md", "GETTING_STARTED.md", "docs/methods/*.md", "README.md", "INSTALL.md", "ADDING_A_METHOD.md",
             "docs/toyworld.md", "docs/refused_inputs.md", "demo/README.md")
LINK_DOCS = ("README.md", "INSTALL.md", "GETTING_STARTED.md", "MODEL_ZOO.md", "ADDING_A_METHOD.md", "DEVELOPERS.md",
             "demo/README.md", "tools/README.md", "datasets/README.md", "docs/*.md", "docs/methods/*.md")
README_MAX_LINES = 160
FENCE = re.compile(r"^```.*?^```[ \t]*$", re.S | re.M)


def read(rel: str) -> str:
    with open(os.path.join(REPO, rel), encoding="utf-8") as f:
        return f.read()


def doc_files(patterns):
    found = sorted({os.path.relpath(p, REPO) for pat in patterns for p in glob.glob(os.path.join(REPO, pat))})
    assert found, patterns
    return found


def repo_paths():
    """Every file and folder of the working tree (relative, '/'-separated), build outputs left out."""
    out = set()
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        rel = os.path.relpath(root, REPO).replace(os.sep, "/")
        for name in dirs + files:
            out.add(name if rel == "." else f"{rel}/{name}")
    return out


# ---------------------------------------------------------------------------- DEVELOPERS.md's layout

def layout_entries(text: str):
    """The paths of the Layout section's tree: one entry a line, two spaces of indent per level."""
    section = text[text.index("\n## Layout\n"):]
    section = section[:section.find("\n## ", 1)] if "\n## " in section[1:] else section
    block = FENCE.search(section).group(0).splitlines()[1:-1]
    stack, paths = [], []
    for line in block:
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0, f"Layout line not indented by levels of two spaces: {line!r}"
        depth = indent // 2
        assert depth <= len(stack), f"Layout line indented deeper than its parent: {line!r}"
        name = line.split()[0]
        stack = stack[:depth]
        paths.append("/".join(stack + [name.rstrip("/")]))
        if name.endswith("/"):
            stack.append(name.rstrip("/"))
    return paths


def package_tree():
    """ovss_d2's folders and modules (``__init__.py`` left out), and the top-level folders of the layout."""
    out = set(TOP_LEVEL)
    for root, dirs, files in os.walk(os.path.join(REPO, "ovss_d2")):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.startswith(".")]
        rel = os.path.relpath(root, REPO).replace(os.sep, "/")
        out.add(rel)
        out.update(f"{rel}/{f}" for f in files if f.endswith(".py") and f != "__init__.py")
    return out


def test_layout_names_every_module_and_folder():
    named = set(layout_entries(read("DEVELOPERS.md")))
    missing = sorted(package_tree() - named)
    assert not missing, f"DEVELOPERS.md's Layout does not name: {missing}"


def test_every_path_of_the_layout_exists():
    stale = [p for p in layout_entries(read("DEVELOPERS.md")) if not os.path.exists(os.path.join(REPO, p))]
    assert not stale, f"DEVELOPERS.md's Layout names paths that do not exist: {stale}"


def test_layout_parser_sees_nesting():
    text = "\n## Layout\n\n```\na/\n  b.py   x\n  c/\n    d.py\ne.py\n```\n"
    assert layout_entries(text) == ["a", "a/b.py", "a/c", "a/c/d.py", "e.py"]


# ---------------------------------------------------------------------------- paths named in the docs

def expand_braces(path: str):
    parts = re.split(r"\{([^{}]*)\}", path)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def named_paths(text: str, first_segments):
    """Repository paths a page names: code spans and link targets whose first folder is one of the
    tree's, and the configs / scripts its commands name."""
    prose = FENCE.sub("", text)
    spans = [s.strip() for s in re.findall(r"`([^`]+)`", prose)]
    links = [t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", prose)]
    commands = [t for block in FENCE.findall(text) for t in re.findall(r"[\w./{},*-]+\.(?:py|yaml)\b", block)]
    out = []
    for cand in spans + commands:
        if "/" not in cand or re.search(r"[\s<>$]", cand) or cand.startswith(("/", ".", "http")):
            continue
        if cand.split("/")[0] in first_segments:
            out.append(cand)
    return out + [t for t in links if t and not t.startswith(("http:", "https:", "mailto:"))]


def resolves(cand: str, paths, base: str) -> bool:
    """A named path resolves when it is a repository path, a path relative to the page, or the
    tail of one (``modeling/losses.py`` on a page that names the package once); globs match one."""
    cand = cand.split("::")[0].rstrip("/")
    if os.path.exists(os.path.normpath(os.path.join(REPO, base, cand))):
        return True
    if "*" in cand:
        return any(fnmatch.fnmatch(p, cand) or fnmatch.fnmatch(p, "*/" + cand) for p in paths)
    return cand in paths or any(p.endswith("/" + cand) for p in paths)


@pytest.mark.parametrize("doc", doc_files(PATH_DOCS))
def test_paths_named_in_the_docs_exist(doc):
    paths = repo_paths()
    first_segments = {p.split("/")[-1] for p in paths if os.path.isdir(os.path.join(REPO, p))}
    base = os.path.dirname(doc)
    missing = sorted({c for cand in named_paths(read(doc), first_segments) for c in expand_braces(cand)
                      if not resolves(c, paths, base)})
    assert not missing, f"{doc} names paths that do not exist: {missing}"


@pytest.mark.parametrize("doc", doc_files(("docs/methods/*.md",)))
def test_each_method_page_lists_its_code(doc):
    text = read(doc)
    assert "\n## Code\n" in text, f"{doc} has no 'Code' section"
    code = text[text.index("\n## Code\n"):]
    assert re.search(r"`ovss_d2/modeling/meta_arch/\w+\.py`", code), f"{doc}'s Code section names no meta-architecture"


# ---------------------------------------------------------------------------- README and links

def test_readme_is_short():
    lines = read("README.md").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines (at most {README_MAX_LINES}): move text to docs/"


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]{1,2}(?=\S)|(?<=\S)[`*_]{1,2}", lambda m: "_" if m.group(0) == "_" else "", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str):
    seen, out = {}, set()
    for heading in re.findall(r"^#{1,6} (.+?)\s*$", FENCE.sub("", text), re.M):
        slug = github_anchor(heading)
        out.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return out


def test_anchor_rule():
    assert github_anchor("Data at (`tools/benchmark_data.py`)") == "data-at-toolsbenchmark_datapy"
    assert github_anchor("ToyWorld: naming classes") == "toyworld-naming-classes"
    assert github_anchor("Web demo (`demo/app.py`)") == "web-demo-demoapppy"


@pytest.mark.parametrize("doc", doc_files(LINK_DOCS))
def test_relative_links_resolve(doc):
    text = read(doc)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", FENCE.sub("", text)):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        full = os.path.normpath(os.path.join(REPO, os.path.dirname(doc), path)) if path else os.path.join(REPO, doc)
        if not os.path.exists(full):
            broken.append(target)
        elif anchor and full.endswith(".md") and anchor not in anchors(open(full, encoding="utf-8").read()):
            broken.append(target)
    assert not broken, f"{doc}: links that do not resolve: {broken}"


def test_tools_readme_names_every_tool():
    text = read("tools/README.md")
    tools = [os.path.relpath(p, os.path.join(REPO, "tools")) for p in glob.glob(os.path.join(REPO, "tools", "**", "*"),
                                                                                 recursive=True)
             if p.endswith((".py", ".sh", ".c")) and "__pycache__" not in p]
    missing = sorted(t for t in tools if f"`{t}`" not in text)
    assert not missing, f"tools/README.md does not name: {missing}"
