"""Fixtures every test layer shares."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

VECTORS_PATH = Path(__file__).parent / "vectors" / "v1.json"


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    """The specification's test vectors (a verbatim copy of vectors/v1.json)."""
    return json.loads(VECTORS_PATH.read_text())
