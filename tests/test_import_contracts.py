"""The import contracts of ``.importlinter`` (``make lint`` runs them too): ``ovss_d2.modeling``
imports no data / engine / evaluation / ToyWorld code, nothing in the library imports ToyWorld, and
the subpackages of ``ovss_d2`` import each other without a cycle. They hold on the tree, and an
import of the data package hidden inside a function of a modeling module breaks them."""
import os
import shutil
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, ".importlinter")


def lint_imports(root: str) -> subprocess.CompletedProcess:
    """lint-imports on the ``ovss_d2`` package found in ``root`` (the contracts of the repository)."""
    env = dict(os.environ, PYTHONPATH=root, COLUMNS="200")  # rich wraps its report at the terminal width
    return subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports_command; "
                           "sys.exit(lint_imports_command())", "--config", CONFIG, "--no-cache"],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def _copy_package(dest: str) -> str:
    shutil.copytree(os.path.join(REPO, "ovss_d2"), os.path.join(dest, "ovss_d2"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_the_tree_keeps_the_contracts():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def _append_function(path: str, body: str) -> None:
    with open(path, "a") as f:
        f.write("\n\ndef _contract_probe():\n" + body)


CYCLE_BROKEN = "No import cycle between sibling packages or modules of ovss_d2 (three levels down) BROKEN"


@pytest.mark.parametrize("module, body, expected", [
    # modeling -> data inside a function: grimp reads function bodies, the forbidden-import contract fails
    (("modeling", "cost_map.py"), "from ..data.io import read_label\n\n    return read_label",
     ["ovss_d2.modeling.cost_map -> ovss_d2.data.io"]),
    # data -> ToyWorld: the ToyWorld contract and the cycle check (ToyWorld imports data) fail
    (("data", "io.py"), "from ..toyworld import generator\n\n    return generator",
     ["ovss_d2.data.io -> ovss_d2.toyworld.generator", CYCLE_BROKEN]),
])
def test_an_import_inside_a_function_breaks_them(tmp_path, module, body, expected):
    root = _copy_package(str(tmp_path))
    _append_function(os.path.join(root, "ovss_d2", *module), f"    {body}\n")
    result = lint_imports(root)
    assert result.returncode != 0
    for text in expected:
        assert text in result.stdout, result.stdout
