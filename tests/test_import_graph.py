"""The package's module structure: no import circle, ``torch.distributed`` only in ``dist.py``, and a
command line that uses only the public names of the modules it imports (issue 13, the trainer split).

The import graph is read from the source with ``ast``: every ``import`` / ``from ... import`` of an
``mvssl_core`` module, at module level or inside a function (a lazy import is still a dependency), is
an edge; ``from mvssl_core import x`` is an edge to ``mvssl_core.x`` when ``x`` is a module. Only the
imports under ``if TYPE_CHECKING:`` (never executed: names for annotations) are not edges.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import mvssl_core

PACKAGE = Path(mvssl_core.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    """Every module of the package: its dotted name and file."""
    out = {}
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="mvssl_core."):
        spec = importlib.util.find_spec(info.name)
        out[info.name] = Path(spec.origin)
    out["mvssl_core"] = PACKAGE / "__init__.py"
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute module named by a ``from`` import of ``module``'s source (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rsplit(".", 1)[0]
    for _ in range(node.level - 1):
        package = package.rsplit(".", 1)[0]
    return f"{package}.{node.module}" if node.module else package


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the nodes inside ``if TYPE_CHECKING:`` blocks."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            out |= {id(inner) for stmt in node.body for inner in ast.walk(stmt)}
    return out


def _source_imports(module: str, source: str) -> set[str]:
    """The modules that ``source`` (of ``module``) imports anywhere (module level or in a function)."""
    tree = ast.parse(source)
    skipped = _type_checking_only(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(module, node)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return found


def _imports(module: str) -> set[str]:
    """The package modules that ``module`` imports."""
    found = _source_imports(module, MODULES[module].read_text(encoding="utf-8"))
    return {name for name in found if name in MODULES and name != module}


def _graph() -> dict[str, set[str]]:
    return {module: _imports(module) for module in MODULES}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (its modules in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_module_imports():
    for name in MODULES:
        importlib.import_module(name)


def test_the_cycle_finder_finds_a_circle():
    # the test below proves nothing if _cycle misses circles: a lazy edge back to the trainer is one
    graph = _graph()
    assert "mvssl_core.evaluate" in graph["mvssl_core.train"]
    graph["mvssl_core.evaluate"] = graph["mvssl_core.evaluate"] | {"mvssl_core.train"}
    cycle = _cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and "mvssl_core.train" in cycle


def test_lazy_imports_count_and_type_checking_ones_do_not():
    source = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mvssl_core.config import RunConfig\n"
              "def f():\n    from mvssl_core import dist\n    import mvssl_core.build\n")
    found = _source_imports("mvssl_core.train", source)
    assert {"mvssl_core.dist", "mvssl_core.build"} <= found and "mvssl_core.config" not in found


def test_the_trainer_modules_are_in_the_graph():
    graph = _graph()
    parts = {"mvssl_core.build", "mvssl_core.sampler", "mvssl_core.runstate", "mvssl_core.dist"}
    assert parts <= graph["mvssl_core.train"]
    assert "mvssl_core.runstate" in graph["mvssl_core.evaluate"]  # a lazy import, counted


def test_the_package_has_no_import_circle():
    assert _cycle(_graph()) is None


def test_torch_distributed_is_used_only_in_dist():
    users = sorted(name for name, path in MODULES.items()
                   if any(word in path.read_text(encoding="utf-8") for word in ("torch.distributed", "torch_dist")))
    assert users == ["mvssl_core.dist"]


def _private_imports(path: Path) -> list[str]:
    """``name`` for each private name (a leading underscore) imported from an ``mvssl_core`` module, and
    ``module._name`` for each private attribute read from an imported ``mvssl_core`` module."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules = set()  # local names bound to mvssl_core modules
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mvssl_core"):
            for alias in node.names:
                if alias.name.startswith("_"):
                    found.append(alias.name)
                if f"{node.module}.{alias.name}" in MODULES:
                    modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            modules |= {alias.asname or alias.name for alias in node.names if alias.name.startswith("mvssl_core")}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Name) and node.value.id in modules):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_cli_uses_only_public_names():
    assert _private_imports(PACKAGE / "cli.py") == []


@pytest.mark.parametrize("source, expected", [
    ("from mvssl_core.train import _init_runtime, train", ["_init_runtime"]),
    ("def f():\n    from mvssl_core.build import _split\n", ["_split"]),
    ("from mvssl_core import train as t\nt._loop(None)", ["t._loop"]),
    ("from mvssl_core import dist\ndist.init_runtime", []),
    ("from mvssl_core._checks import x", []),  # a private module's public name: not a private name
])
def test_private_imports_are_found(tmp_path, source, expected):
    path = tmp_path / "x.py"
    path.write_text(source)
    assert _private_imports(path) == expected
