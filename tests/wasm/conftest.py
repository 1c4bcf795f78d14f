"""The example kernels of docs/workloads/, built once per run with clang, as a client would."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

from build_kernels import build


@pytest.fixture(scope="session")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    built = build(tmp_path_factory.mktemp("kernels"))
    return {name: path.read_bytes() for name, path in built.items()}
