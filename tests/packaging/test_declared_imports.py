"""Every distribution declares what it imports, and what an extra declares stays optional.

The imports are read from the source with ``ast`` — module-level and function-level
alike, since a lazy import runs just as surely when its function is called — and mapped
to the distributions that provide them (``importlib.metadata.packages_distributions``).
A distribution may depend on another of ours: the agent and the coordinator import
``aeamc.shared`` modules, so what those modules import counts as theirs too, declared
either by themselves or through the ``aeamc-shared[...]`` extras they require.

Declaring an import in an extra (``[hsm]``, ``[chain]``, …) instead of in
``dependencies`` is a claim that the distribution works without it until the feature is
used. That claim is checked by importing every module of the distribution in an
interpreter where the extras' modules cannot be found.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import re
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.coordinator import env_without_coverage

REPO = Path(__file__).resolve().parents[2]
#: distribution → (project folder, its import package)
PROJECTS = {
    "aeamc-shared": ("shared", "aeamc.shared"),
    "aeamc-agent": ("agent", "aeamc.agent"),
    "aeamc-coordinator": ("coordinator", "aeamc.coordinator"),
}
OURS = {canonicalize_name(d) for d in PROJECTS}

#: Imports a distribution reaches in a shared module but never runs, and why.
NEVER_RUN: dict[str, dict[str, str]] = {
    "aeamc-agent": {
        # Secp256k1HsmSigner in aeamc.shared.runtime.pkcs11 is the coordinator's
        # anchoring wallet; a device signs with Ed25519 only.
        name: "the secp256k1 (anchoring wallet) signer is the coordinator's"
        for name in ("eth-account", "eth-keys", "eth-utils")
    },
}

#: Modules of aeamc-shared that import an extra's module at their top, by that extra: a
#: daemon imports them only when it needs the feature (aeamc/shared/runtime/__init__.py).
FEATURE_MODULES = {
    "aeamc.shared.runtime.edge": "edge",
    "aeamc.shared.runtime.mdns": "mdns",
    "aeamc.shared.wasm": "wasm",
}


@dataclass(frozen=True)
class Import:
    """One ``import`` statement's module, where it is, and how it runs."""

    module: str  # absolute dotted name
    file: Path
    line: int
    top_level: bool  # runs when the importing module is imported
    guarded: bool  # inside ``try: … except ImportError`` (the code copes without it)

    def where(self) -> str:
        return f"{self.file.relative_to(REPO)}:{self.line}"


def module_name(path: Path) -> str:
    """The dotted name of a source file under ``<project>/src``."""
    rel = path.relative_to(next(p for p in path.parents if p.name == "src"))
    parts = list(rel.with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(distribution: str) -> list[Path]:
    folder, package = PROJECTS[distribution]
    return sorted((REPO / folder / "src" / Path(*package.split("."))).rglob("*.py"))


@cache
def all_modules() -> dict[str, Path]:
    """Every module of the three distributions, by dotted name."""
    return {module_name(f): f for d in PROJECTS for f in source_files(d)}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
    types = handler.type
    if types is None:
        return True
    elts = types.elts if isinstance(types, ast.Tuple) else [types]
    return any(isinstance(e, ast.Name) and e.id in names for e in elts)


@cache
def imports_of(path: Path) -> tuple[Import, ...]:
    """Every import a module can run, resolved to absolute names.

    ``if TYPE_CHECKING:`` blocks never run and are left out. ``from a import b`` yields
    ``a.b`` when that is one of our modules (a submodule), else ``a``.
    """
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, top_level: bool, guarded: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child, top_level, guarded)
            return
        if isinstance(node, ast.Try):
            covers = any(_catches_import_error(h) for h in node.handlers)
            for child in node.body:
                visit(child, top_level, guarded or covers)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                visit(child, top_level, guarded)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(alias.name, path, node.lineno, top_level, guarded))
            return
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" for a in node.names]
            subs = [t for t in targets if t in all_modules()]
            for target in subs or [module]:
                found.append(Import(target, path, node.lineno, top_level, guarded))
            return
        inner = top_level and not isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
        )
        for child in ast.iter_child_nodes(node):
            visit(child, inner, guarded)

    visit(ast.parse(path.read_text(), filename=str(path)), True, False)
    return tuple(found)


def own_module(dotted: str) -> str | None:
    """The module of ours that ``dotted`` names (or its nearest package), if any."""
    while dotted:
        if dotted in all_modules():
            return dotted
        dotted = dotted.rpartition(".")[0]
    return None


def reached(distribution: str) -> Iterator[tuple[Import, str]]:
    """Third-party imports the distribution's code can run, with the module that runs
    them: its own modules, and the modules of ours they import (at any depth)."""
    _, package = PROJECTS[distribution]
    todo = [module_name(f) for f in source_files(distribution)]
    seen = set(todo)
    while todo:
        module = todo.pop()
        for imp in imports_of(all_modules()[module]):
            top = imp.module.split(".")[0]
            if top in sys.stdlib_module_names or top == "__future__":
                continue
            if top != "aeamc":
                yield imp, module
                continue
            target = own_module(imp.module)
            if target is None or not (target.startswith((package, "aeamc.shared"))):
                continue  # another distribution of ours: see the test of guarded imports
            # Importing a module imports its packages first.
            parts = target.split(".")
            for n in range(2, len(parts) + 1):
                name = ".".join(parts[:n])
                if name in all_modules() and name not in seen:
                    seen.add(name)
                    todo.append(name)


@cache
def providers() -> dict[str, frozenset[str]]:
    """Top-level import name → canonical names of the distributions that provide it."""
    return {
        top: frozenset(canonicalize_name(d) for d in dists)
        for top, dists in importlib.metadata.packages_distributions().items()
    }


@cache
def pyproject(distribution: str) -> dict[str, object]:
    folder, _ = PROJECTS[distribution]
    return tomllib.loads((REPO / folder / "pyproject.toml").read_text())["project"]


def _requirements(distribution: str, extra: str | None) -> list[Requirement]:
    project = pyproject(distribution)
    if extra is None:
        lines = project.get("dependencies", [])
    else:
        lines = project.get("optional-dependencies", {}).get(extra, [])  # type: ignore[union-attr]
    return [Requirement(line) for line in lines]  # type: ignore[union-attr]


def effective(distribution: str, extras: frozenset[str] = frozenset()) -> set[str]:
    """Canonical names of what installing ``distribution[extras]`` declares, following
    requirements on our own distributions (with their extras) — what pip would install
    directly for it, before the third-party dependencies' own dependencies."""
    names: set[str] = set()
    todo = [(distribution, None), *((distribution, e) for e in extras)]
    done: set[tuple[str, str | None]] = set()
    while todo:
        item = todo.pop()
        if item in done:
            continue
        done.add(item)
        for req in _requirements(*item):
            name = canonicalize_name(req.name)
            if name in OURS:
                ours = next(d for d in PROJECTS if canonicalize_name(d) == name)
                todo.append((ours, None))
                todo.extend((ours, e) for e in req.extras)
            else:
                names.add(name)
    return names


def extras_of(distribution: str) -> frozenset[str]:
    return frozenset(pyproject(distribution).get("optional-dependencies", {}))  # type: ignore[arg-type]


def optional_only(distribution: str) -> set[str]:
    """Distributions an extra declares and a plain install does not."""
    return effective(distribution, extras_of(distribution)) - effective(distribution)


@pytest.mark.parametrize("distribution", sorted(PROJECTS))
def test_every_import_is_declared(distribution: str) -> None:
    base = effective(distribution)
    everything = effective(distribution, extras_of(distribution))
    exempt = NEVER_RUN.get(distribution, {})
    missing: dict[str, list[str]] = {}
    for imp, _module in reached(distribution):
        top = imp.module.split(".")[0]
        dists = providers().get(top)
        assert dists, f"{imp.where()}: no installed distribution provides {top!r}"
        if dists & everything or dists & set(exempt):
            continue
        missing.setdefault("/".join(sorted(dists)), []).append(imp.where())
    assert not missing, f"{distribution} imports what it does not declare: {missing}"
    assert base <= everything


@pytest.mark.parametrize("distribution", sorted(PROJECTS))
def test_imports_of_our_other_distributions_are_declared_or_guarded(distribution: str) -> None:
    """``aeamc-shared`` must not need the coordinator: its ``aeamc devnet`` tries it."""
    _, package = PROJECTS[distribution]
    declared = effective(distribution) | {
        canonicalize_name(r.name) for r in _requirements(distribution, None)
    }
    for path in source_files(distribution):
        for imp in imports_of(path):
            target = own_module(imp.module) if imp.module.startswith("aeamc.") else None
            if target is None or target.startswith(package):
                continue
            owner = next(d for d, (_, p) in PROJECTS.items() if target.startswith(p))
            assert canonicalize_name(owner) in declared or imp.guarded, (
                f"{imp.where()}: imports {target} of {owner}, neither declared nor guarded"
            )


def test_the_exemptions_are_still_needed() -> None:
    """An exemption the code no longer needs would hide a future undeclared import."""
    for distribution, names in NEVER_RUN.items():
        reachable = set()
        for imp, _ in reached(distribution):
            reachable |= providers().get(imp.module.split(".")[0], frozenset())
        declared = effective(distribution, extras_of(distribution))
        for name in names:
            assert name in reachable, f"{distribution}: {name} is no longer imported"
            assert name not in declared, f"{distribution}: {name} is declared now"


_IMPORT_ALL = textwrap.dedent(
    """
    import importlib, importlib.abc, json, sys
    blocked, modules = set(sys.argv[1].split(",")) - {""}, sys.argv[2].split(",")

    class Missing(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in blocked:
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, Missing())
    failed = {}
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            failed[module] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(failed))
    """
)


def import_with_blocked(modules: list[str], blocked: set[str]) -> dict[str, str]:
    """Import ``modules`` in a new interpreter where the ``blocked`` top-level names are
    missing; the modules that failed, with their error."""
    result = subprocess.run(
        [sys.executable, "-c", _IMPORT_ALL, ",".join(sorted(blocked)), ",".join(modules)],
        capture_output=True,
        text=True,
        env=env_without_coverage(),
        check=True,
        timeout=300,
    )
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def top_level_names(distributions: set[str]) -> set[str]:
    """The import names the given distributions provide."""
    return {top for top, dists in providers().items() if dists & distributions}


@pytest.mark.parametrize("distribution", sorted(PROJECTS))
def test_what_extras_declare_is_not_needed_to_import_the_distribution(distribution: str) -> None:
    """Without its extras installed, every module of the distribution still imports —
    except, in aeamc-shared, a feature module whose own extra is then missing."""
    optional = optional_only(distribution)
    assert optional, f"{distribution} declares no extra"
    blocked = top_level_names(optional) - top_level_names(effective(distribution))
    modules = [
        m
        for m in (module_name(f) for f in source_files(distribution))
        if not m.endswith("__main__") and m not in FEATURE_MODULES
    ]
    assert import_with_blocked(modules, blocked) == {}
    if distribution != "aeamc-shared":
        return
    for module, extra in FEATURE_MODULES.items():
        needs = effective(distribution, frozenset({extra})) - effective(distribution)
        assert import_with_blocked([module], blocked - top_level_names(needs)) == {}
        assert module in import_with_blocked([module], blocked), f"{module} needs no [{extra}]"


def pins() -> dict[str, str]:
    """requirements/constraints.txt: canonical name → the pinned version."""
    found = {}
    for line in (REPO / "requirements" / "constraints.txt").read_text().splitlines():
        if match := re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line.strip()):
            found[canonicalize_name(match.group(1))] = match.group(2)
    return found


@pytest.mark.parametrize("distribution", sorted(PROJECTS))
def test_declared_versions_admit_the_pinned_ones(distribution: str) -> None:
    """The packages install the pins (packaging/build.py): each declared lower bound
    must admit them, and every declared distribution must be pinned."""
    pinned = pins()
    for extra in [None, *sorted(extras_of(distribution))]:
        for req in _requirements(distribution, extra):
            name = canonicalize_name(req.name)
            if name in OURS:
                assert not req.specifier, f"{req}: ours share one version, unpinned"
                continue
            assert name in pinned, f"{distribution}: {req} is not in constraints.txt"
            assert req.specifier.contains(pinned[name], prereleases=True), (
                f"{distribution}: {req} excludes the pinned {name}=={pinned[name]}"
            )
