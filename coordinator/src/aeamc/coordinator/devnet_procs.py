"""The processes of a local network (``devnet.py``): how each is started and stopped.

Each child runs in a session of its own, so a Ctrl-C in the terminal reaches only the
devnet, which then stops its children in order (agents, coordinator, chain).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def find_anvil() -> Path:
    """anvil from ``AEAMC_ANVIL``, the project's node_modules, or PATH."""
    candidates = [os.environ.get("AEAMC_ANVIL", "")]
    for base in (Path.cwd(), *Path.cwd().parents):
        candidates.append(str(base / "node_modules" / ".bin" / "anvil"))
    candidates.append(shutil.which("anvil") or "")
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return Path(c)
    raise DevnetError("anvil not found: run `npm ci` in the repository, or set AEAMC_ANVIL")


class DevnetError(Exception):
    pass


@dataclass
class Proc:
    name: str
    args: list[str]
    log: Path
    env: dict[str, str] | None = None
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
            )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 15) -> None:
        if not self.alive():
            return
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
