"""What a fresh interpreter has imported after some imports: the check behind every
"this path loads none of …" test (purity of the core, the slim launcher, web3 kept out)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.coordinator import env_without_coverage


def modules_after(code: str) -> set[str]:
    """The names in ``sys.modules`` once ``code`` has run in a new interpreter — measured
    without coverage, whose tracer would itself import sqlite3."""
    script = (
        f"{code}\nimport json as _json, sys as _sys\nprint(_json.dumps(sorted(_sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env=env_without_coverage(),
    )
    return set(json.loads(out.stdout))
