"""The code's shape stays readable: no module over 600 lines, no class over 400, and every
public method of the coordinator's services and store says what it guarantees.

Like the import-graph test, this parses the sources with `ast` and imports nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [ROOT / "agent" / "src", ROOT / "coordinator" / "src", ROOT / "shared" / "src"]
COORDINATOR = ROOT / "coordinator" / "src" / "aeamc" / "coordinator"

MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400

#: The coordinator's services (one concern each), its background loops and its store.
SERVICES = [
    *(
        COORDINATOR / f"{name}.py"
        for name in [
            "context",
            "service",
            "tokens",
            "enrollment",
            "heartbeats",
            "flags",
            "tasks",
            "ingestion",
            "settlement",
            "verdicts",
            "blocks",
            "privacy",
            "devices",
            "maintenance",
            "status",
            "scheduler",
            "spotchecks",
        ]
    ),
    *sorted((COORDINATOR / "store").glob("*.py")),
]


def _sources() -> list[Path]:
    return [path for src in SOURCES for path in sorted(src.rglob("*.py"))]


def _classes(tree: ast.Module) -> list[ast.ClassDef]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)]


def _public_without_docstring(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(), str(path))
    missing = []
    for cls in [c for c in tree.body if isinstance(c, ast.ClassDef)]:
        if not cls.name.startswith("_") and ast.get_docstring(cls) is None:
            missing.append(cls.name)
        for fn in cls.body:
            if (
                isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
                and not fn.name.startswith("_")
                and ast.get_docstring(fn) is None
            ):
                missing.append(f"{cls.name}.{fn.name}")
    if path.parent.name == "store":
        missing += [
            fn.name
            for fn in tree.body
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            and not fn.name.startswith("_")
            and ast.get_docstring(fn) is None
        ]
    return missing


def test_no_module_is_over_the_line_bar() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in _sources()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_no_class_is_over_the_line_bar() -> None:
    long = {}
    for path in _sources():
        for cls in _classes(ast.parse(path.read_text(), str(path))):
            lines = (cls.end_lineno or cls.lineno) - cls.lineno + 1
            if lines > MAX_CLASS_LINES:
                long[f"{path.relative_to(ROOT)}:{cls.name}"] = lines
    assert long == {}


def test_every_public_service_method_has_a_docstring() -> None:
    assert all(path.exists() for path in SERVICES)
    missing = {
        str(path.relative_to(ROOT)): names
        for path in SERVICES
        if (names := _public_without_docstring(path))
    }
    assert missing == {}


def test_the_docstring_check_sees_a_bare_method(tmp_path: Path) -> None:
    bare = tmp_path / "bare.py"
    bare.write_text('class S:\n    """A service."""\n\n    def act(self) -> None:\n        pass\n')
    assert _public_without_docstring(bare) == ["S.act"]
