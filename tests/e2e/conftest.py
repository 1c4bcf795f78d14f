"""What every end-to-end test may ask for: the coordinator and agent processes it starts,
each stopped at the end whatever happened."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.agent import AgentProcess
from tests.support.coordinator import CoordinatorProcess


@pytest.fixture
def coordinators() -> Iterator[list[CoordinatorProcess]]:
    """Coordinator processes a test starts; all stopped at the end, whatever happened."""
    started: list[CoordinatorProcess] = []
    yield started
    for c in started:
        c.stop()


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for a in started:
        a.close()
