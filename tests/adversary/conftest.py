"""Coordinators for adversary tests: a real process per test, with the settings it attacks
(by default, spot-checks that time out and give up fast)."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.coordinator import CoordinatorProcess, running_coordinator
from tests.support.fixtures import coordinator  # noqa: F401

#: Challenges time out fast and are retried once, so silence reaches its verdict quickly.
QUICK_CHECKS = {
    "spot_checks": {
        "retry_s": 0.3,
        "timeout_s": 1.5,
        "max_attempts": 2,
        "quarantine_after_unanswered": 2,
    }
}


CoordinatorFactory = Callable[..., CoordinatorProcess]


@pytest.fixture
def make_coordinator(tmp_path: Path) -> Iterator[CoordinatorFactory]:
    """``make_coordinator(settings)``: a started coordinator process, stopped at teardown."""
    numbers = itertools.count()
    with contextlib.ExitStack() as started:

        def make(settings: dict[str, Any] | None = None) -> CoordinatorProcess:
            root = tmp_path / f"coord-{next(numbers)}"
            return started.enter_context(running_coordinator(root, settings or QUICK_CHECKS))

        yield make
