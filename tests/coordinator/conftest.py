from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.coordinator import CoordinatorProcess


@pytest.fixture
def coordinator(tmp_path: Path) -> Iterator[CoordinatorProcess]:
    proc = CoordinatorProcess(tmp_path / "coord")
    proc.init()
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def enroll_token(coordinator: CoordinatorProcess) -> str:
    status, body = coordinator.request(
        "POST", "/v1/tokens", {"role": "enroll", "uses": 50}, token=coordinator.token("operator")
    )
    assert status == 201, body
    return str(body["token"])
