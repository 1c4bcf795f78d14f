"""The protocol core stays pure: importing all of it pulls in no I/O framework."""

from __future__ import annotations

import json
import os
import subprocess
import sys

#: The one subpackage allowed to do I/O (asyncio, zeroconf); the core never imports it.
RUNTIME = "aeamc.shared.runtime."
FORBIDDEN = ["aiohttp", "web3", "sqlite3", "sqlite_utils", "zeroconf", "psutil", "numpy", "asyncio"]


def test_shared_imports_no_io_frameworks() -> None:
    code = (
        f"RUNTIME = {RUNTIME!r}\n"
        "import json, sys, pkgutil, importlib, aeamc.shared as s\n"
        "for m in pkgutil.walk_packages(s.__path__, 'aeamc.shared.'):\n"
        "    if not m.name.startswith(RUNTIME):\n"
        "        importlib.import_module(m.name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    # Coverage measurement of subprocesses would itself import sqlite3: measure without it.
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    loaded = set(json.loads(out.stdout))
    assert "aeamc.shared.bundle" in loaded
    assert "aeamc.shared.tasks.classify_int8" in loaded
    assert not loaded & set(FORBIDDEN), loaded & set(FORBIDDEN)
    assert not {m for m in loaded if m.startswith(RUNTIME)}
