"""The product's commands run as separate processes, the way a user runs them."""

from __future__ import annotations

import subprocess
import sys


def run_module(
    module: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` (what the installed command runs), output captured as text.

    A non-zero exit does not raise: the tests assert on the status themselves."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
