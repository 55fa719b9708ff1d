"""The imports between the repository's top-level folders go one way only, read from the source (ast).

The allowed direction, lowest first (a folder imports only folders of a lower layer):

    gsq_core                          the model; imports none of the others
    runtimes                          runs exports (and the eager model) behind one interface; owns the
                                      backends and the token-shard reader
    exporters, gsq_dataset, train     build artifacts / tokenize datasets / train, asking runtimes
    benchmarks                        measures all of the above

runtimes/, exporters/ and train/ install as gsq_deploy.runtimes, gsq_deploy.exporters and
gsq_deploy.train (pyproject.toml): an import of gsq_deploy.X is an import of folder X.

So runtimes/ never imports gsq_dataset/ (gsq-tokenize output is read by runtimes.token_shards), and
no two folders import each other, directly or through a third.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"gsq_core": 0, "runtimes": 1, "exporters": 2, "gsq_dataset": 2, "train": 2, "benchmarks": 3}


def imported_modules(tree: ast.AST) -> list[tuple[str, int]]:
    """(absolute module name, line) of every import in a module: import / from-import statements at
    any depth (functions, TYPE_CHECKING blocks) and importlib.import_module("constant").
    `from gsq_deploy import runtimes` counts as an import of gsq_deploy.runtimes."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "gsq_deploy":
            found += [(f"gsq_deploy.{alias.name}", node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute | ast.Name)
            and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.args[0].value, node.lineno))
    return found


def folder_of(module: str) -> str:
    """The top-level folder a module lives in: gsq_deploy.runtimes.onnx -> runtimes."""
    parts = module.split(".")
    return parts[1] if parts[0] == "gsq_deploy" and len(parts) > 1 else parts[0]


def folder_imports(repo: Path) -> list[tuple[str, str, str]]:
    """(importing folder, imported folder, 'path:line') for every import from one top-level folder of
    another."""
    edges = []
    for folder in LAYERS:
        for path in sorted((repo / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for module, line in imported_modules(tree):
                target = folder_of(module)
                if target in LAYERS and target != folder:
                    edges.append((folder, target, f"{path.relative_to(repo)}:{line}"))
    return edges


def cycle(edges: list[tuple[str, str, str]]) -> list[str] | None:
    """A cycle of folders in the import graph (depth-first search), or None."""
    graph: dict[str, set[str]] = {}
    for source, target, _ in edges:
        graph.setdefault(source, set()).add(target)
    state: dict[str, str] = {}  # "open" while on the search path, "done" after

    def visit(node: str, path: list[str]) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt, path)):
                return found
        state[node] = "done"
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [])):
            return found
    return None


@pytest.fixture(scope="module")
def edges() -> list[tuple[str, str, str]]:
    return folder_imports(REPO)


def test_every_module_of_the_folders_parses_and_some_imports_are_found(edges):
    assert {source for source, _, _ in edges} >= {"runtimes", "gsq_dataset", "exporters", "benchmarks"}


def test_runtimes_do_not_import_gsq_dataset(edges):
    wrong = [where for source, target, where in edges if source == "runtimes" and target == "gsq_dataset"]
    assert not wrong, f"runtimes/ imports gsq_dataset/ at {', '.join(wrong)}"


def test_gsq_core_imports_none_of_the_other_folders(edges):
    wrong = [f"{where} ({target})" for source, target, where in edges if source == "gsq_core"]
    assert not wrong, f"gsq_core/ imports other folders at {', '.join(wrong)}"


def test_imports_go_down_the_layers_only(edges):
    wrong = [f"{where}: {source} -> {target}" for source, target, where in edges if LAYERS[source] <= LAYERS[target]]
    assert not wrong, "imports against the allowed direction:\n" + "\n".join(wrong)


def test_no_cycle_between_the_folders(edges):
    found = cycle(edges)
    assert found is None, f"import cycle: {' -> '.join(found or [])}"


def test_the_checks_see_a_planted_import(tmp_path):
    """The same reading finds an import of gsq_dataset planted inside a function of runtimes/."""
    for folder in LAYERS:
        (tmp_path / folder).mkdir()
    (tmp_path / "runtimes" / "cli.py").write_text(
        "def decode():\n    from gsq_dataset.tokens import read_tokens\n    return read_tokens\n"
    )
    (tmp_path / "gsq_dataset" / "job.py").write_text("import importlib\nimportlib.import_module('gsq_deploy.runtimes.onnx')\n")
    planted = folder_imports(tmp_path)
    assert ("runtimes", "gsq_dataset", "runtimes/cli.py:2") in planted
    assert cycle(planted) in (["gsq_dataset", "runtimes", "gsq_dataset"], ["runtimes", "gsq_dataset", "runtimes"])


def test_backend_knowledge_stays_in_runtimes():
    """Issue 20's acceptance: gsq_dataset/ and benchmarks/ neither decide GPU use by backend name nor
    read runtime constructors' signatures; they ask the runtimes' declarations."""
    found = [
        f"{path.relative_to(REPO)}:{number}"
        for folder in ("gsq_dataset", "benchmarks")
        for path in sorted((REPO / folder).rglob("*.py"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "uses_gpu" in line or "inspect.signature" in line
    ]
    assert not found, f"backend knowledge outside runtimes/ at {', '.join(found)}"


def test_the_repository_imports_runtimes_exporters_and_train_by_their_installed_names():
    """Code and tests import gsq_deploy.runtimes (and relative imports inside a folder), never the
    checkout's top-level `runtimes`, which an installed wheel does not have. Exceptions: the commands
    `python -m runtimes.onnx` (strings, not imports) and the test that the two names are one module."""
    bare = ("runtimes", "exporters", "train")
    allowed = {REPO / "tests" / "test_installed_names.py"}
    found = [
        f"{path.relative_to(REPO)}:{line} ({module})"
        for folder in (*LAYERS, "tests")
        for path in sorted((REPO / folder).rglob("*.py"))
        if "fixtures" not in path.parts and path not in allowed
        for module, line in imported_modules(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
        if module.split(".")[0] in bare
    ]
    assert not found, f"imports by the checkout's folder names at {', '.join(found)}"
