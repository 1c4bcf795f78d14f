"""Where task kinds come from: the built-ins, and plug-ins through an entry-point group.

A third party ships a kind as a package declaring
``[project.entry-points."aeamc.task_kinds"] my-kind = "my_pkg.module:KIND"``; agent and
coordinator both pick it up without edits. Built-ins load lazily so that a kind's heavy
dependencies (numpy for ``classify-int8``) are imported only when that kind runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Mapping
from importlib.metadata import entry_points
from typing import Any

from ..errors import UnknownTaskKind, ValidationError
from .base import TaskKind

ENTRY_POINT_GROUP = "aeamc.task_kinds"

BUILTIN_KINDS: dict[str, str] = {
    "sha256-chain": "aeamc.shared.tasks.sha256_chain:KIND",
    "classify-int8": "aeamc.shared.tasks.classify_int8:KIND",
}


def _load(target: str) -> TaskKind:
    module_name, _, attr = target.partition(":")
    obj: Any = getattr(importlib.import_module(module_name), attr)
    if not isinstance(obj, TaskKind):
        raise TypeError(f"{target} is not a task kind")
    return obj


class KindRegistry:
    """Name → kind, resolved on first use."""

    def __init__(self, targets: Mapping[str, str | TaskKind]) -> None:
        self._targets = dict(targets)
        self._loaded: dict[str, TaskKind] = {}

    def names(self) -> list[str]:
        return sorted(self._targets)

    def __contains__(self, name: object) -> bool:
        return name in self._targets

    def get(self, name: str) -> TaskKind:
        if name in self._loaded:
            return self._loaded[name]
        target = self._targets.get(name)
        if target is None:
            raise UnknownTaskKind(f"unknown task kind {name!r}")
        kind = _load(target) if isinstance(target, str) else target
        if kind.name != name:
            raise TypeError(f"kind registered as {name!r} calls itself {kind.name!r}")
        self._loaded[name] = kind
        return kind

    def register(self, kind: TaskKind) -> None:
        """Add a kind built at run time (one that needs the process's own state, such as
        the ``wasm`` kind's content source); a name already known is never replaced."""
        if kind.name in self._targets:
            raise ValueError(f"a kind named {kind.name!r} is already registered")
        self._targets[kind.name] = kind

    def validate(self, name: str, params: Mapping[str, Any], chunks: int) -> TaskKind:
        kind = self.get(name)
        if not isinstance(params, Mapping):
            raise ValidationError("params", "expected an object")
        kind.validate_params(params, chunks)
        return kind


def discover(extra: Iterable[tuple[str, str | TaskKind]] = ()) -> KindRegistry:
    """Built-ins plus every installed plug-in (a plug-in cannot replace a built-in)."""
    targets: dict[str, str | TaskKind] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        targets.setdefault(ep.name, ep.value)
    targets.update(extra)
    targets.update(BUILTIN_KINDS)
    return KindRegistry(targets)
