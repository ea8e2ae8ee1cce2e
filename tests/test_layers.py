"""The layers' shape: each layer's errors form one tree, no module of a layer imports itself
back through others (an import circle), and no layer imports one above it."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

from app.errors import AppError
from images.errors import ImagesError
from integrations.errors import IntegrationsError
from workers.errors import WorkersError

ROOT = Path(__file__).resolve().parent.parent


def _modules(package: str) -> list[str]:
    path = [str(ROOT / package)]
    return [package] + [m.name for m in pkgutil.walk_packages(path, f"{package}.")]


ROOTS = [
    ("app", AppError),
    ("workers", WorkersError),
    ("images", ImagesError),
    ("integrations", IntegrationsError),
]


@pytest.mark.parametrize(("package", "root"), ROOTS)
def test_every_error_a_layer_defines_joins_its_tree(package: str, root: type) -> None:
    outside = []
    # Alembic's scripts run migrations when imported: they define no errors.
    for name in [m for m in _modules(package) if not m.startswith("app.migrations")]:
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            defined_here = cls.__module__ == name
            if defined_here and issubclass(cls, BaseException) and not issubclass(cls, root):
                outside.append(f"{name}.{cls_name}")
    assert outside == [], f"outside the {root.__name__} tree: {outside}"


@pytest.mark.parametrize(("package", "root"), ROOTS)
def test_each_layers_errors_module_draws_every_class_of_its_tree(package: str, root: type) -> None:
    """The docstring of `<layer>/errors.py` is the map of the tree: a class missing from it is
    one a reader of the map would not know to catch."""
    drawn = importlib.import_module(f"{package}.errors").__doc__ or ""
    missing = []
    for name in [m for m in _modules(package) if not m.startswith("app.migrations")]:
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == name and issubclass(cls, root) and cls_name not in drawn:
                missing.append(f"{name}.{cls_name}")
    assert missing == [], f"not drawn in {package}/errors.py: {missing}"


def _imports(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same layer it imports, at any depth of its code (an import
    inside a function or under TYPE_CHECKING still ties the two)."""
    known = set(_modules(package))
    graph: dict[str, set[str]] = {}
    for name in known:
        file = ROOT / Path(*name.split("."))
        source = file / "__init__.py" if file.is_dir() else file.with_suffix(".py")
        targets: set[str] = set()
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
        graph[name] = {t for t in targets if t in known and t != name}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.mark.parametrize("package", ["app", "workers", "images", "integrations"])
def test_no_import_circles_inside_a_layer(package: str) -> None:
    graph = _imports(package)
    # A package's __init__ that only hands names on ties nothing: leave it out.
    faces = {n for n in graph if (ROOT / Path(*n.split("."))).is_dir()}
    graph = {n: t - faces for n, t in graph.items() if n not in faces}
    assert _circles(graph) == []


BELOW = {
    "workers": {"images", "integrations"},
    "images": {"integrations"},
    "integrations": set(),
}
LAYERS = {"app", "workers", "images", "integrations"}


@pytest.mark.parametrize("package", sorted(BELOW))
def test_layers_only_point_down(package: str) -> None:
    """app -> workers -> images -> integrations: no module imports a layer above its own (at
    any depth of its code, TYPE_CHECKING and function-level imports included)."""
    upward = []
    for name in _modules(package):
        file = ROOT / Path(*name.split("."))
        source = file / "__init__.py" if file.is_dir() else file.with_suffix(".py")
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
            else:
                continue
            for target in targets:
                layer = target.split(".")[0]
                if layer in LAYERS and layer != package and layer not in BELOW[package]:
                    upward.append(f"{name} imports {target}")
    assert upward == [], f"{package} reaches up: {upward}"


MAX_MODULE_LINES = 400


def test_no_product_module_is_over_400_lines() -> None:
    """A module past 400 lines is two things that want their own names (docs/ARCHITECTURE.md)."""
    long = {
        str(path.relative_to(ROOT)): count
        for package in ("app", "workers", "images", "integrations")
        for path in (ROOT / package).rglob("*.py")
        if "migrations" not in path.parts
        and (count := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, f"split these (lines): {long}"
