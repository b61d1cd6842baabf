"""The house: layers that only look down, no import cycles, no private names across modules, a
small top level and short functions. Each package's ``__init__`` docstring (and each top-level
module's) declares what it may import in a ``May import:`` line; these tests hold the code to it."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "attnexp"
MAX_TOP_LEVEL_MODULES = 8
MAX_FUNCTION_LINES = 80


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
TREES = {name: ast.parse(path.read_text()) for name, path in MODULES.items()}


def unit(module: str) -> str:
    """The package (``attnexp.runs``) or top-level module (``attnexp.cli``) a module belongs to."""
    return ".".join(module.split(".")[:2])


def imported(module: str) -> list[tuple[str, list[str], int]]:
    """``(module imported, names taken from it, line)`` for every import of an attnexp module in
    ``module``, at any depth (a function's lazy import counts: it still couples the two)."""
    found = []
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "attnexp":
                continue
            for alias in node.names:  # ``from attnexp.report import stats``: the submodule
                sub = f"{node.module}.{alias.name}"
                target = sub if sub in MODULES else node.module
                found.append((target, [] if target == sub else [alias.name], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("attnexp.")]
    return found


def declared_imports() -> dict[str, set[str]]:
    """Each unit's ``May import:`` line, as the set of units it names."""
    declared = {}
    for module, tree in TREES.items():
        if module != unit(module) or module == "attnexp":
            continue
        doc = ast.get_docstring(tree) or ""
        match = re.search(r"May import:(.*?)(?:\n\n|\.\s|$)", doc, re.S)
        assert match, f"{MODULES[module]}: its docstring has no 'May import:' line"
        declared[module] = set(re.findall(r"attnexp\.\w+", match.group(1)))
    return declared


DECLARED = declared_imports()


def test_every_package_declares_what_it_may_import_and_the_declarations_form_layers():
    # Acyclic declarations: a topological order exists, so the packages are layers.
    order, remaining = [], dict(DECLARED)
    while remaining:
        ready = sorted(u for u, deps in remaining.items() if deps <= set(order))
        assert ready, f"the declared imports of {sorted(remaining)} form a cycle"
        order += ready
        for u in ready:
            del remaining[u]
    assert set(DECLARED) >= {"attnexp.util", "attnexp.runs", "attnexp.cli"}


def test_no_module_imports_from_a_layer_it_does_not_declare():
    wrong = [
        f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {target}"
        for m in MODULES
        if unit(m) in DECLARED
        for target, _, line in imported(m)
        if unit(target) != unit(m) and unit(target) not in DECLARED[unit(m)]
    ]
    assert not wrong, "imports against the layers (docs/architecture.md):\n" + "\n".join(wrong)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    graph = defaultdict(set)
    for m in MODULES:
        graph[m] |= {t for t, _, _ in imported(m) if t in MODULES and t != m}
        graph[m]  # a module importing nothing is still a node
    return graph


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_is_imported_across_modules():
    private = [
        f"{MODULES[m].relative_to(PACKAGE.parent)}:{line} imports {name} from {target}"
        for m in MODULES
        for target, names, line in imported(m)
        for name in names
        if name.startswith("_") and target != m
    ]
    assert not private, "\n".join(private)


def test_the_top_level_keeps_only_the_front_doors():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    for package in (p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"):
        doc = ast.get_docstring(TREES[f"attnexp.{package.name}"]) or ""
        assert len(doc.split()) >= 10, f"{package}: its __init__ must say what it owns"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_function_is_longer_than_80_lines(module):
    long = [
        f"{n.name} ({n.end_lineno - n.lineno + 1} lines)"
        for n in ast.walk(TREES[module])
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{MODULES[module]}: {', '.join(long)}"
