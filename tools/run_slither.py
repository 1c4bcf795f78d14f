"""Run slither on the contracts with the project's compiler and settings, offline.

Usage: python tools/run_slither.py [SLITHER ARGS...]
Without arguments it analyses this checkout's contracts/ as `make test` does (from any
directory); with arguments it runs slither with them in the current directory.

Two things make slither work here without downloading anything:

- crytic-compile calls ``solc`` from PATH in standard-JSON mode (contracts/slither.config.json
  sets ``solc_standard_json``), so tools/solc/ goes first on PATH: its ``solc`` is the pinned
  npm compiler that contracts/build.mjs uses, not solc-select's shim, which would fetch one.
- slither-analyzer 0.9.6 (the newest release that installs beside web3 8) imports
  ``pkg_resources`` for its version and plugins; setuptools 81 and later no longer ship it,
  so an equivalent built on importlib.metadata stands in when it is missing.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
import types
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
SOLC_DIR = REPO_ROOT / "tools" / "solc"
DEFAULT_ARGS = ["contracts", "--config-file", "contracts/slither.config.json"]


def _pkg_resources_stand_in() -> types.ModuleType:
    module = types.ModuleType("pkg_resources")

    def require(name: str) -> list[types.SimpleNamespace]:
        return [types.SimpleNamespace(version=importlib.metadata.version(name))]

    def iter_entry_points(group: str, name: str | None = None) -> list[Any]:
        points = importlib.metadata.entry_points(group=group)
        return [p for p in points if name is None or p.name == name]

    module.require = require  # type: ignore[attr-defined]
    module.iter_entry_points = iter_entry_points  # type: ignore[attr-defined]
    return module


def main(argv: list[str]) -> None:
    if importlib.util.find_spec("pkg_resources") is None:
        sys.modules["pkg_resources"] = _pkg_resources_stand_in()
    os.environ["PATH"] = os.pathsep.join([str(SOLC_DIR), os.environ.get("PATH", "")])
    if not argv:
        os.chdir(REPO_ROOT)
        argv = DEFAULT_ARGS
    sys.argv = ["slither", *argv]

    from slither.__main__ import main as slither_main

    slither_main()


if __name__ == "__main__":
    main(sys.argv[1:])
