"""The example kernels, built once per run with clang, as a client would."""

from __future__ import annotations

import pytest

from tests.support.kernels import kernels as built


@pytest.fixture(scope="session")
def kernels() -> dict[str, bytes]:
    return built()
