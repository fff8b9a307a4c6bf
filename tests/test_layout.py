"""The layout of issue 11: lockstore's modules import only downwards, with no cycle, and the source tree's
``stress`` harness is not shipped as a top-level package (PyPI has a project of that name).

Imports are read from the source (``ast``), lazy ones inside functions included; only those under
``if TYPE_CHECKING:`` are left out, as they never run.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "lockstore"

# The README's "Architecture" layers, lowest first: a module may import its own layer or lower ones.
LAYERS = [
    {"errors", "ids", "record", "codec", "options", "_files", "_process", "locks"},
    {"base", "aio"},
    {"store", "_admin", "backends", "remote"},
    {"opener"},
    {"web"},
    {"wsgi", "asgi", "flask", "django", "compat", "tiered", "_tier", "copy", "cli", "stripes", "__init__", "__main__"},
]


def _name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def _layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for number, names in enumerate(LAYERS):
        if top in names:
            return number
    raise AssertionError(f"{module} is in no layer of the README's Architecture")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def _imports(path: Path) -> set[str]:
    """The lockstore modules *path* imports when it runs (absolute names)."""
    module = _name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.ImportFrom):
                base = package
                for _ in range(child.level - 1):
                    base = base.rpartition(".")[0]
                target = (f"{base}.{child.module}" if child.module else base) if child.level else child.module or ""
                if target == "lockstore" or target.startswith("lockstore."):
                    # "from .. import record" imports the module lockstore.record, not the package's surface
                    submodules = [f"{target}.{a.name}" for a in child.names if f"{target}.{a.name}" in NAMES]
                    found.update(submodules or [target])
            elif isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.startswith("lockstore"))
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    found.discard(module)
    return found


NAMES = {_name(path) for path in PACKAGE.rglob("*.py")}
MODULES = {_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}
GRAPH = {module: _imports(path) for module, path in MODULES.items()}
# The deprecated import paths re-export their new home, a higher layer by design, with a warning.
SHIMS = {"lockstore.backends.redis", "lockstore.backends.postgres"}


@pytest.mark.parametrize("module", sorted(set(MODULES) - SHIMS))
def test_a_module_imports_only_its_own_layer_or_lower(module: str) -> None:
    upward = sorted(t for t in GRAPH[module] if t in MODULES and _layer(t) > _layer(module))
    assert not upward, f"{module} (layer {_layer(module)}) imports a higher layer: {upward}"


def test_no_import_cycle() -> None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(GRAPH.get(module, ())):
            # a package's __init__ importing its own submodules is how a package re-exports, not a cycle
            if target not in MODULES or target.startswith(module + "."):
                continue
            if state.get(target) == 1:
                cycle = [*stack[stack.index(target) :], target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                walk(target)
        stack.pop()
        state[module] = 2

    for module in sorted(MODULES):
        if module not in state:
            walk(module)


def test_stress_is_not_installed_as_a_top_level_package() -> None:
    from setuptools import find_packages

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    find = config["tool"]["setuptools"]["packages"]["find"]
    packages = find_packages(str(ROOT), include=find.get("include", ["*"]), exclude=find.get("exclude", ()))
    assert "lockstore" in packages
    assert all(name == "lockstore" or name.startswith("lockstore.") for name in packages), packages
