"""The shape of the code, checked from its imports: layers point one way (services -> pipelines ->
seqattn_core; bench may use all three, nothing uses bench), no module imports another in a cycle,
and no module imports another module's private (underscore) name."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("seqattn_core", "pipelines", "services", "bench")
# Which top-level packages each one may import.
ALLOWED = {
    "seqattn_core": {"seqattn_core"},
    "pipelines": {"pipelines", "seqattn_core"},
    "services": {"services", "pipelines", "seqattn_core"},
    "bench": {"bench", "services", "pipelines", "seqattn_core"},
}


def modules() -> dict[str, Path]:
    out = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> Iterator[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every project import in ``path``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in PACKAGES:
                    yield alias.name, None, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:  # ``from pkg import module``
                    yield sub, None, node.lineno
                else:
                    yield target, alias.name, node.lineno


KNOWN = modules()
EDGES = {name: list(imports(name, path, KNOWN)) for name, path in KNOWN.items()}


def test_layers_point_one_way() -> None:
    wrong = [f"{KNOWN[name].relative_to(REPO)}:{line} imports {target}"
             for name, edges in EDGES.items() for target, _, line in edges
             if target.split(".")[0] not in ALLOWED[name.split(".")[0]]]
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_another_modules_private_name() -> None:
    wrong = [f"{KNOWN[name].relative_to(REPO)}:{line} imports {target}.{what}"
             for name, edges in EDGES.items() for target, what, line in edges
             if what and what.startswith("_") and not what.startswith("__") and target != name]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = {name: sorted({t for t, _, _ in edges if t in KNOWN and t != name}) for name, edges in EDGES.items()}
    # A package's __init__ re-exporting its modules is not a cycle with them.
    graph = {n: [t for t in ts if not (n.startswith(t + ".") and KNOWN[t].name == "__init__.py")]
             for n, ts in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", ["pipelines.job", "services.selector_api.app"])
def test_the_check_sees_the_imports(name: str) -> None:
    """The parser finds imports at all (a check that found none would pass on anything)."""
    assert EDGES[name]
