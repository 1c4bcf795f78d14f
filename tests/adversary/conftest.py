"""Coordinators for adversary tests: each test asks for the settings it attacks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.coordinator import CoordinatorProcess

CoordinatorFactory = Callable[..., CoordinatorProcess]


@pytest.fixture
def make_coordinator(tmp_path: Path) -> Iterator[CoordinatorFactory]:
    """``make_coordinator(settings)``: a started coordinator process, stopped at teardown."""
    started: list[CoordinatorProcess] = []

    def make(settings: dict[str, Any] | None = None) -> CoordinatorProcess:
        proc = CoordinatorProcess(tmp_path / f"coord-{len(started)}", settings=settings or {})
        proc.init()
        proc.start()
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.stop()
