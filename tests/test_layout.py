"""The package layout keeps its promises: imports point down the pull chain, rooms stay small.

Every ``lazytiles`` module belongs to a *room* (a top-level module or folder), and the rooms are
layered in the order of the pull chain (docs/architecture.rst draws it). An import may point to a
lower room or stay in its own; module-level imports (``if TYPE_CHECKING:`` ones included) form a
graph without circles. The only imports allowed to point up are lazy ones inside the Jupyter hooks
(``_repr_*_``, ``show``), which draw a picture with ``lazytiles.display``, and reading
``lazytiles.__version__``. The check reads the source (``ast``); it imports nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lazytiles"

#: Rooms from the bottom up; rooms in one tuple are side by side and may not import each other.
LAYERS: list[tuple[str, ...]] = [
    ("errors",),
    ("grid",),
    ("cache",),
    ("assembly",),
    ("sources",),
    ("windowing",),
    ("prefetching",),
    ("geometry",),
    ("detections",),
    ("detection",),
    ("merging",),
    ("outputs",),
    ("runs",),
    ("beam", "streams"),
    ("display", "testing"),
    ("demo",),
    ("cli",),
    ("__init__", "__main__"),
]
LEVEL = {room: level for level, rooms in enumerate(LAYERS) for room in rooms}

#: Functions whose body may import upward: Jupyter display hooks and pictures.
HOOKS = ("_repr_", "show", "preview", "_ipython_display_")

#: Largest module, in lines (the layout issue's guide).
MAX_LINES = 450


def modules() -> dict[str, Path]:
    """``{"lazytiles.a.b": path}`` for every module of the package."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join(base + ([name] if name else []))


def imports(module: str, path: Path, known: dict[str, Path]) -> list[tuple[str, int, str | None, str]]:
    """``(target module, line, enclosing function or None, imported name)`` for each lazytiles import."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[str, int, str | None, str]] = []

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, function or child.name)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.split(".")[0] == "lazytiles":
                        found.append((alias.name, child.lineno, function, ""))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    target = resolve(module, is_package, child.level, child.module)
                else:
                    target = child.module or ""
                if target.split(".")[0] != "lazytiles":
                    continue
                for alias in child.names:  # `from . import x` names a module when x is one
                    sub = f"{target}.{alias.name}"
                    found.append((sub if sub in known else target, child.lineno, function, alias.name))
            visit(child, function)

    visit(tree, None)
    return found


def test_imports_point_down_the_pull_chain() -> None:
    known = modules()
    assert set(map(room, known)) <= set(LEVEL), "a new room: give it its place in LAYERS"
    wrong = []
    for module, path in known.items():
        for target, line, function, name in imports(module, path, known):
            here, there = room(module), room(target)
            if here == there or LEVEL[there] < LEVEL[here]:
                continue
            if target == "lazytiles" and name == "__version__":
                continue
            if function is not None and function.startswith(HOOKS) and there == "display":
                continue
            where = f"{path.relative_to(PACKAGE.parent)}:{line}"
            wrong.append(f"{where}: {here} imports {target} ({there} is not below {here})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def test_module_level_imports_have_no_circles() -> None:
    known = modules()
    graph: dict[str, set[str]] = {m: set() for m in known}
    for module, path in known.items():
        for target, _line, function, _name in imports(module, path, known):
            if function is None and target in known and target != module:
                graph[module].add(target)
    # every module's package __init__ runs first; an edge into a package is an edge into its __init__
    state: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def walk(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                circles.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                walk(t)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            walk(m)
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


@pytest.mark.parametrize("module", sorted(modules()))
def test_modules_stay_small(module: str) -> None:
    lines = len(modules()[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{module} has {lines} lines; split it along a seam inside its room"


def test_no_module_shares_a_name_with_a_public_function() -> None:
    import lazytiles as lt

    functions = {name for name in lt.__all__ if callable(getattr(lt, name)) and not isinstance(getattr(lt, name), type)}
    top = {p.stem for p in PACKAGE.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert not functions & top, f"lazytiles.{sorted(functions & top)} is both a function and a module"
