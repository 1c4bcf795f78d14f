"""The module graph of aeamc has no cycles, and the protocol core imports no application.

Every module under agent/, coordinator/ and shared/ is parsed with `ast` (nothing is
imported), and every import of an `aeamc.*` module is collected: at module level and inside
functions, absolute and relative. A cycle is reported as the strongly connected component it
belongs to, so one failure lists every module that has to be untangled together.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "agent" / "src", ROOT / "coordinator" / "src", ROOT / "shared" / "src"]


def _modules() -> dict[str, Path]:
    """Every `aeamc.*` module name in the three distributions and the file that holds it."""
    found: dict[str, Path] = {}
    for src in SOURCES:
        for path in sorted(src.rglob("*.py")):
            parts = list(path.relative_to(src).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The known modules that `name` (stored at `path`) imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            # `from pkg import name` names a submodule when one of that name exists.
            targets = [f"{prefix}.{alias.name}" for alias in node.names] + [prefix]
        else:
            continue
        for dotted in targets:
            # `import a.b.c` also runs a and a.b; the edge that matters is to the deepest one.
            target = dotted
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: set(_imported(name, path, known)) for name, path in modules.items()}


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the components with more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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
    return found


def test_graph_sees_module_and_function_level_imports() -> None:
    graph = _graph()
    assert "aeamc.shared.canonical" in graph["aeamc.shared.messages"]
    assert "aeamc.agent.config" in graph["aeamc.agent.daemon"]
    assert len(graph) > 100
    assert sum(len(edges) for edges in graph.values()) > 300


def test_no_import_cycles() -> None:
    cycles = _strongly_connected(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" ⇄ ".join(c) for c in cycles)


def test_protocol_core_imports_no_application() -> None:
    graph = _graph()
    wrong = sorted(
        f"{name} → {target}"
        for name, edges in graph.items()
        if name.startswith("aeamc.shared")
        for target in edges
        if target.startswith(("aeamc.agent", "aeamc.coordinator"))
    )
    assert not wrong, wrong
