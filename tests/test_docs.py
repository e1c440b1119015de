"""The documentation's examples stay true: README.rst and docs/*.rst.

Their ``>>>`` examples run as doctests (``--doctest-glob=*.rst`` in setup.cfg). What a doctest run
cannot see is checked here, by reading the pages:

- every ``.. code-block:: python`` (examples that need a broker, a cluster or a file we do not have)
  compiles, and every name it imports exists: modules are imported, imported names and the
  attributes used on them (``lt.kafka.publish``) are looked up;
- every section stands alone: its doctest examples use only names bound in the same section, so a
  reader can copy any one section, and reordering sections breaks nothing;
- Python is never hidden in a plain ``::`` literal block, where nothing would check it;
- links to other pages point to files that exist.
"""

from __future__ import annotations

import ast
import builtins
import doctest
import importlib
import re
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.rst", *sorted((ROOT / "docs").glob("*.rst"))]

#: Modules an example may import without lazytiles depending on them: checked only when installed.
OPTIONAL = {"torchvision"}
#: Names a code block may only use after importing them (the usual aliases of modules).
MODULE_ALIASES = {"lt", "np", "beam", "torch", "torchvision", "shapely", "json", "rasterio"}

_ADORNMENT = re.compile(r"([=\-~^\"'`#*+])\1{2,}\s*")
_DIRECTIVE = re.compile(r"^(\s*)\.\. code-block::\s*(\S*)\s*$")
_LINK = re.compile(r"`[^`<]*<([^>`]+)>`_")


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # 1-based line of the first line of code
    language: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def _indented_block(lines: list[str], start: int, indent: int) -> tuple[int, str]:
    """The block of lines after ``start`` indented deeper than ``indent`` (options and blank lines
    skipped): ``(first code line index, dedented text)``."""
    i = start + 1
    while i < len(lines) and (not lines[i].strip() or lines[i].strip().startswith(":")):
        i += 1
    first, body = i, []
    while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
        body.append(lines[i])
        i += 1
    return first, textwrap.dedent("\n".join(body)).strip("\n") + "\n"


def code_blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, line in enumerate(lines):
        m = _DIRECTIVE.match(line)
        if m:
            first, code = _indented_block(lines, i, len(m.group(1)))
            blocks.append(Block(page, first + 1, m.group(2).lower(), code))
    return blocks


def literal_blocks(page: Path) -> list[Block]:
    """Plain ``::`` literal blocks (not directives)."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks = []
    for i, line in enumerate(lines):
        if line.rstrip().endswith("::") and not line.lstrip().startswith(".."):
            indent = len(line) - len(line.lstrip())
            first, code = _indented_block(lines, i, indent)
            blocks.append(Block(page, first + 1, "", code))
    return blocks


def sections(page: Path) -> list[tuple[str, int, str]]:
    """``(title, line, text)`` of every section, at any level; text runs to the next title."""
    lines = page.read_text(encoding="utf-8").splitlines()
    starts = [
        i
        for i in range(len(lines) - 1)
        if lines[i].strip()
        and not _ADORNMENT.fullmatch(lines[i])
        and _ADORNMENT.fullmatch(lines[i + 1])
        and len(lines[i + 1].rstrip()) >= len(lines[i].rstrip())
    ]
    bounds = [*starts, len(lines)]
    return [(lines[s].strip(), s + 1, "\n".join(lines[s : bounds[k + 1]])) for k, s in enumerate(starts)]


ALL_BLOCKS = [b for page in PAGES for b in code_blocks(page)]
PYTHON_BLOCKS = [b for b in ALL_BLOCKS if b.language in ("python", "py", "python3")]
ALL_SECTIONS = [(page, *s) for page in PAGES for s in sections(page)]


def _section_id(item: tuple[Path, str, int, str]) -> str:
    return f"{item[0].relative_to(ROOT)}:{item[2]}"


# -- names bound and used --------------------------------------------------------------------------


def _bound_and_used(tree: ast.AST) -> tuple[set[str], set[str]]:
    bound: set[str] = set()
    used: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            (used if isinstance(node.ctx, ast.Load) else bound).add(node.id)
        elif isinstance(node, ast.alias):
            bound.add((node.asname or node.name).split(".")[0])
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.arg):
            bound.add(node.arg)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.add(node.name)
    return bound, used


BUILTINS = set(dir(builtins))


# -- code blocks ----------------------------------------------------------------------------------


def test_pages_exist() -> None:
    names = {p.name for p in PAGES}
    assert {
        "README.rst",
        "architecture.rst",
        "remote.rst",
        "beam.rst",
        "kafka.rst",
        "benchmarks.rst",
        "scenes.rst",
    } <= names


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.id)
def test_python_code_block_compiles(block: Block) -> None:
    try:
        compile(block.code, block.id, "exec")
    except SyntaxError as err:
        pytest.fail(f"{block.id}: the code block does not compile: {err}")


def _import(module: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if module.split(".")[0] in OPTIONAL and err.name and err.name.split(".")[0] in OPTIONAL:
            return None  # an optional package that is not installed here
        raise


def _lookup(obj: Any, name: str) -> Any:
    """``obj.name``, importing ``obj``'s submodule ``name`` when ``obj`` is a package."""
    try:
        return getattr(obj, name)
    except AttributeError:
        if hasattr(obj, "__path__"):
            return importlib.import_module(f"{obj.__name__}.{name}")
        raise


def _attribute_chain(node: ast.Attribute) -> tuple[str, list[str]] | None:
    names = []
    current: ast.expr = node
    while isinstance(current, ast.Attribute):
        names.append(current.attr)
        current = current.value
    if isinstance(current, ast.Name):
        return current.id, names[::-1]
    return None


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda b: b.id)
def test_python_code_block_imports_what_exists(block: Block) -> None:
    tree = ast.parse(block.code)
    aliases: dict[str, Any] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                module = _import(alias.name)
                if module is None:
                    continue
                if alias.asname:
                    aliases[alias.asname] = module
                else:
                    top = alias.name.split(".")[0]
                    aliases[top] = importlib.import_module(top)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0 and node.module, f"{block.id}: relative import in an example"
            module = _import(node.module)
            if module is None:
                continue
            for alias in node.names:
                try:
                    aliases[alias.asname or alias.name] = _lookup(module, alias.name)
                except (AttributeError, ImportError):
                    pytest.fail(f"{block.id}: `from {node.module} import {alias.name}`: no such name")
    missing = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (chain := _attribute_chain(node)) and chain[0] in aliases:
            root, names = chain
            obj = aliases[root]
            for k, name in enumerate(names):
                try:
                    obj = _lookup(obj, name)
                except (AttributeError, ImportError):
                    missing.append(".".join([root, *names[: k + 1]]))
                    break
    assert not missing, f"{block.id}: these names do not exist: {sorted(set(missing))}"
    bound, used = _bound_and_used(tree)
    unimported = sorted((used & MODULE_ALIASES) - bound)
    assert not unimported, f"{block.id}: uses {unimported} without importing them; each example imports its own names"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_python_in_plain_literal_blocks(page: Path) -> None:
    hidden = [
        b.id
        for b in literal_blocks(page)
        if re.search(r"^(import \w|from [\w.]+ import )", b.code, re.M) or ">>>" in b.code
    ]
    assert not hidden, f"Python in `::` literal blocks, where nothing checks it; use `.. code-block:: python`: {hidden}"


# -- doctest sections -------------------------------------------------------------------------------


@pytest.mark.parametrize("item", ALL_SECTIONS, ids=_section_id)
def test_section_stands_alone(item: tuple[Path, str, int, str]) -> None:
    page, title, line, text = item
    bound: set[str] = set()
    for example in doctest.DocTestParser().get_examples(text):
        tree = ast.parse(example.source)
        here, used = _bound_and_used(tree)
        free = sorted(used - bound - here - BUILTINS)
        assert not free, (
            f"{page.relative_to(ROOT)}:{line + example.lineno} (section {title!r}) uses {free}, which this "
            "section does not define; import or make them in the section itself"
        )
        bound |= here


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_links_point_to_files(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    broken = [
        target
        for target in _LINK.findall(text)
        if "://" not in target and not (page.parent / target.split("#")[0]).exists()
    ]
    assert not broken, f"{page.name} links to files that do not exist: {broken}"
