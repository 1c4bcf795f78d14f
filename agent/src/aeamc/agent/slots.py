"""Installed agent releases ("slots") and the files the launcher and the daemon share.

``<state_dir>/releases/``:

================  ===========================================================================
``<version>/``    one release, installed from its wheels (``aeamc.agent``, ``aeamc.shared``)
                  into ``site/``; runs on the base installation's dependencies.
                  ``.complete`` marks it whole
``slots.json``    written by the launcher only: ``active`` ("" = the base installation),
                  ``previous``, the ``trial`` in progress, the versions that ``failed`` here
``request.json``  the daemon asks the launcher to switch to an installed release
``confirm.json``  the daemon on trial says it is healthy (its first heartbeat was accepted)
``reports/``      update reports not yet delivered to the coordinator
================  ===========================================================================

Each file has one writer, and every write is a rename over the old file, so a power cut
leaves either version of it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RELEASES_DIR = "releases"
COMPLETE = ".complete"
#: The base installation (the Debian package's venv, or wherever pip put the agent).
BASE = ""


@dataclass
class Trial:
    version: str
    previous: str
    started_ms: int
    starts: int = 0


@dataclass
class SlotState:
    active: str = BASE
    previous: str | None = None
    trial: Trial | None = None
    #: version → why it failed on this device; never offered to it again.
    failed: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class Slots:
    def __init__(self, state_dir: Path) -> None:
        self.dir = state_dir / RELEASES_DIR

    # -- slot directories -----------------------------------------------------------------

    def path(self, version: str) -> Path:
        return self.dir / version

    def site(self, version: str) -> Path:
        """The folder put first on the daemon's ``PYTHONPATH`` for this release."""
        return self.path(version) / "site"

    def installed(self, version: str) -> bool:
        return version == BASE or (self.path(version) / COMPLETE).is_file()

    def installed_versions(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.name for p in self.dir.iterdir() if (p / COMPLETE).is_file())

    def remove(self, version: str) -> None:
        if version != BASE:
            shutil.rmtree(self.path(version), ignore_errors=True)

    def prune(self, keep: set[str]) -> list[str]:
        """Remove every installed release but ``keep`` (the active and previous ones)."""
        removed = [v for v in self.installed_versions() if v not in keep]
        for version in removed:
            self.remove(version)
        return removed

    # -- slots.json (the launcher's) ------------------------------------------------------

    def load(self) -> SlotState:
        data = _read(self.dir / "slots.json")
        if not isinstance(data, dict):
            return SlotState()
        trial = data.get("trial")
        failed = data.get("failed")
        return SlotState(
            active=str(data.get("active") or BASE),
            previous=data.get("previous") if isinstance(data.get("previous"), str) else None,
            trial=Trial(**trial) if isinstance(trial, dict) else None,
            failed={str(k): str(v) for k, v in failed.items()} if isinstance(failed, dict) else {},
        )

    def save(self, state: SlotState) -> None:
        _write(self.dir / "slots.json", state.to_json())

    # -- requests and confirmations (the daemon's) --------------------------------------------

    def request(self, version: str) -> None:
        _write(self.dir / "request.json", {"version": version})

    def take_request(self) -> str | None:
        path = self.dir / "request.json"
        data = _read(path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        version = data.get("version") if isinstance(data, dict) else None
        return version if isinstance(version, str) and self.installed(version) else None

    def confirm(self, version: str) -> None:
        _write(self.dir / "confirm.json", {"version": version, "pid": os.getpid()})

    def confirmed(self, version: str) -> bool:
        data = _read(self.dir / "confirm.json")
        return isinstance(data, dict) and data.get("version") == version

    def clear_confirmation(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / "confirm.json").unlink()

    # -- reports ------------------------------------------------------------------------------

    def add_report(self, release: str, outcome: str, detail: str, version: str, at_ms: int) -> None:
        report = {
            "release": release,
            "outcome": outcome,
            "detail": detail[:500],
            "version": version,
            "at_ms": at_ms,
        }
        _write(self.dir / "reports" / f"{release}-{outcome}-{at_ms}.json", report)

    def reports(self) -> list[tuple[Path, dict[str, Any]]]:
        folder = self.dir / "reports"
        if not folder.is_dir():
            return []
        out = []
        for path in sorted(folder.glob("*.json")):
            data = _read(path)
            if isinstance(data, dict):
                out.append((path, data))
            else:
                path.unlink(missing_ok=True)  # unreadable: nothing to deliver
        return out


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        json.dump(data, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
