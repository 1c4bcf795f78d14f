"""Fixtures more than one test directory uses; a directory's conftest imports the ones
it offers its tests (``from tests.support.fixtures import coordinator``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .coordinator import CoordinatorProcess, running_coordinator


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[CoordinatorProcess]:
    """A real coordinator process of the test's own, with the fast test settings."""
    with running_coordinator(tmp_path / "coord") as proc:
        yield proc
