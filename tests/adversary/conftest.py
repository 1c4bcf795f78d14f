"""Coordinators for adversary tests: a real process per test, with the settings it attacks
(by default, spot-checks that time out and give up fast)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.coordinator import CoordinatorProcess

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
    started: list[CoordinatorProcess] = []

    def make(settings: dict[str, Any] | None = None) -> CoordinatorProcess:
        proc = CoordinatorProcess(tmp_path / f"coord-{len(started)}", settings or QUICK_CHECKS)
        proc.init()
        proc.start()
        started.append(proc)
        return proc

    yield make
    for proc in started:
        proc.stop()


def enroll_token(coordinator: CoordinatorProcess, uses: int = 20) -> str:
    status, body = coordinator.request(
        "POST", "/v1/tokens", {"role": "enroll", "uses": uses}, token=coordinator.token("operator")
    )
    assert status == 201, body
    return str(body["token"])
