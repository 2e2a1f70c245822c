"""The import layers, read statically from the source (ast, nothing imported).

Only imports that run when a module is imported count: module level, including
``try``/``if`` blocks there, but not under ``if TYPE_CHECKING:`` and not inside
functions or classes' methods (those are deferred on purpose).

- No import circles among the project's modules, not even counting
  ``if TYPE_CHECKING:`` imports (what the type checker follows).
- ``voice`` (the media plane) never imports ``signaling`` (the control plane).
- ``wire`` (the wire protocol, a leaf package) imports neither.
- SQLAlchemy is imported only under ``signaling/store/``: persistence lives there.

Run as a script to print the module graph's circles: ``python tests/unit/test_import_layers.py``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("signaling", "voice", "wire")

#: Packages whose modules are in no import circle even counting TYPE_CHECKING imports.
TYPE_CIRCLE_FREE: tuple[str, ...] = PACKAGES

#: Modules outside signaling/store/ allowed to import SQLAlchemy: none.
SQLALCHEMY_OUTSIDE_STORE_ALLOWED: frozenset[str] = frozenset()


def module_files() -> dict[str, Path]:
    """Every project module by dotted name (packages by their ``__init__``)."""
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        base = ROOT / package
        if not base.is_dir():
            continue  # wire/ may not exist yet
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level(
    body: list[ast.stmt], typing: bool = False
) -> Iterator[ast.Import | ast.ImportFrom]:
    """Import statements run at import time: not in functions, classes' methods or
    ``if TYPE_CHECKING:`` blocks (their ``else`` runs, so it counts). With ``typing``
    the TYPE_CHECKING imports count too (what the type checker follows)."""
    for node in body:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If):
            if typing or not _is_type_checking(node.test):
                yield from _module_level(node.body, typing)
            yield from _module_level(node.orelse, typing)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody):
                yield from _module_level(block, typing)
            for handler in node.handlers:
                yield from _module_level(handler.body, typing)
        elif isinstance(node, ast.With):
            yield from _module_level(node.body, typing)
        elif isinstance(node, ast.ClassDef):
            yield from _module_level(node.body, typing)  # a class body runs at import


def imported_names(module: str, path: Path, typing: bool = False) -> set[str]:
    """Dotted names a module imports at import time (absolute, as written)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _module_level(tree.body, typing):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
            continue
        if node.level:
            base_parts = package.split(".")
            base_parts = base_parts[: len(base_parts) - (node.level - 1)]
            base = ".".join([*base_parts, node.module] if node.module else base_parts)
        else:
            base = node.module or ""
        names.add(base)
        # `from pkg import mod` imports the submodule pkg.mod when there is one
        names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def import_graph(typing: bool = False) -> dict[str, set[str]]:
    """module -> project modules it imports at import time (with ``typing``, for the
    type checker too). Importing ``a.b.c`` runs ``a`` and ``a.b`` too, so an edge goes
    to each package on the way."""
    modules = module_files()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets: set[str] = set()
        for name in imported_names(module, path, typing):
            parts = name.split(".")
            for end in range(1, len(parts) + 1):
                candidate = ".".join(parts[:end])
                # A module's own packages run before it anyway: not an edge.
                if candidate in modules and not (module + ".").startswith(candidate + "."):
                    targets.add(candidate)
        graph[module] = targets
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def _package(module: str) -> str:
    return module.split(".")[0]


def test_no_import_circles() -> None:
    assert circles(import_graph()) == []


def _in_packages(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_no_circles_even_for_the_type_checker() -> None:
    """Where a part needs its owner, it sees it through a Protocol (calls/host.py,
    sip/session.py's UserAgentCore, relay/channel.py, relay/fastpath.py's
    ForwardingLeg), not its class: the type checker finds no circle either."""
    wrong = [
        circle
        for circle in circles(import_graph(typing=True))
        if any(_in_packages(module, TYPE_CIRCLE_FREE) for module in circle)
    ]
    assert wrong == []


def test_metrics_is_a_leaf_of_signaling() -> None:
    """The metrics registry is imported by most services; it imports none of them
    (its HTTP handler lives in signaling/api/metrics.py), even for type checking, so
    no circle can run through it."""
    graph = import_graph(typing=True)
    assert sorted(t for t in graph["signaling.metrics"] if _package(t) == "signaling") == []


def test_voice_never_imports_signaling() -> None:
    wrong = {
        module: sorted(t for t in targets if _package(t) == "signaling")
        for module, targets in import_graph().items()
        if _package(module) == "voice"
    }
    assert {m: t for m, t in wrong.items() if t} == {}


def test_wire_imports_neither_plane() -> None:
    graph = import_graph()
    wrong = {
        module: sorted(t for t in targets if _package(t) in ("signaling", "voice"))
        for module, targets in graph.items()
        if _package(module) == "wire"
    }
    assert {m: t for m, t in wrong.items() if t} == {}


def _all_imports(path: Path) -> set[str]:
    """Every import in a file, deferred ones too (a function's import still makes the
    module depend on the library)."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module)
    return names


def sqlalchemy_importers() -> list[str]:
    return sorted(
        module
        for module, path in module_files().items()
        if any(n == "sqlalchemy" or n.startswith("sqlalchemy.") for n in _all_imports(path))
    )


def test_sqlalchemy_only_in_store() -> None:
    outside = [
        module
        for module in sqlalchemy_importers()
        if not module.startswith("signaling.store.") and module != "signaling.store"
    ]
    assert sorted(set(outside) - SQLALCHEMY_OUTSIDE_STORE_ALLOWED) == []


if __name__ == "__main__":
    print("import circles (at import time):")
    for circle in circles(import_graph()):
        print("  " + " <-> ".join(circle))
    print("import circles (counting TYPE_CHECKING imports):")
    for circle in circles(import_graph(typing=True)):
        print("  " + " <-> ".join(circle))
    print("sqlalchemy outside signaling/store/:")
    for module in sqlalchemy_importers():
        if not module.startswith("signaling.store"):
            print("  " + module)
