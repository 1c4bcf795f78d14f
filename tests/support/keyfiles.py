"""What every secret key file the product writes must refuse, checked one way for all."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def assert_guarded(
    path: Path,
    create: Callable[[Path], Any],
    load: Callable[[Path], Any],
    error: type[Exception],
    *,
    open_mode: int,
) -> None:
    """The key file at ``path`` is never overwritten by ``create``, and ``load`` refuses
    it while ``open_mode`` lets others read it; it is left back at 0600."""
    with pytest.raises(error, match="refusing to overwrite"):
        create(path)
    os.chmod(path, open_mode)
    with pytest.raises(error, match="too open"):
        load(path)
    os.chmod(path, 0o600)
