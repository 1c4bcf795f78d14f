from __future__ import annotations

import pytest

from tests.support.coordinator import CoordinatorProcess
from tests.support.fixtures import coordinator  # noqa: F401


@pytest.fixture
def enroll_token(coordinator: CoordinatorProcess) -> str:  # noqa: F811
    return coordinator.issue_token("enroll", uses=50)
