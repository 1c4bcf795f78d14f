"""The product's commands run as separate processes, the way a user runs them."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence


def run_module(
    module: str, *args: str, env: dict[str, str] | None = None, prefix: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` (what the installed command runs), output captured as text.

    A non-zero exit does not raise: the tests assert on the status themselves. Standard
    input is empty and not a terminal, as under systemd or in a script. The timeout only
    catches a command that hangs: a loaded test machine can take a minute to start one.
    ``prefix`` runs it through another command (``ip netns exec NS``)."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", module, *args],
        capture_output=True,
        stdin=subprocess.DEVNULL,
        text=True,
        timeout=180,
        env=env,
        check=False,
    )
