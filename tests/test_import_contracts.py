"""The import contracts of ``.importlinter`` (``make lint`` runs them too): ``ovss_d2.modeling``
imports no data / engine / evaluation / ToyWorld code, nothing in the library imports ToyWorld, and
the subpackages of ``ovss_d2`` import each other without a cycle. They hold on the tree, and an
import of the data package hidden inside a function of a modeling module breaks them."""
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, ".importlinter")


def lint_imports(root: str) -> subprocess.CompletedProcess:
    """lint-imports on the ``ovss_d2`` package found in ``root`` (the contracts of the repository)."""
    env = dict(os.environ, PYTHONPATH=root)
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


def test_an_import_inside_a_function_breaks_them(tmp_path):
    """modeling -> data inside a function: the forbidden-import contract fails (grimp reads function
    bodies); data -> ToyWorld: the ToyWorld contract and the cycle check (ToyWorld imports data) fail."""
    root = _copy_package(str(tmp_path / "modeling"))
    _append_function(os.path.join(root, "ovss_d2", "modeling", "cost_map.py"),
                     "    from ..data.io import read_label\n\n    return read_label\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "ovss_d2.modeling.cost_map -> ovss_d2.data.io" in result.stdout, result.stdout

    root = _copy_package(str(tmp_path / "data"))
    _append_function(os.path.join(root, "ovss_d2", "data", "io.py"),
                     "    from ..toyworld import generator\n\n    return generator\n")
    result = lint_imports(root)
    assert result.returncode != 0
    assert "ovss_d2.data.io -> ovss_d2.toyworld.generator" in result.stdout, result.stdout
    assert "No import cycle between sibling packages or modules of ovss_d2 (three levels down) BROKEN" in result.stdout, result.stdout
