"""The agent's state directory: durable files and what lives where.

Layout (all under ``state_dir``)::

    identity.key        Ed25519 seed, hex, mode 0600 (keystore.py)
    seq                 last heartbeat seq used, written durably before each heartbeat
    coordinator.json    the pinned coordinator key and CA fingerprint, cluster, last state
    tls/                the TLS key, the certificate the coordinator issued, its CA (tls.py)
    status.json         what the running daemon last saw (``aeamc-agent status`` reads it)
    queue/              accepted assignments not yet done, one file each (workqueue.py)
    abandoned/          assignments dropped for good (expired...), with the reason
    outbox/             proofs not yet delivered, one file each (outbox.py)
    rejected/           proofs the coordinator refused for good, with the reason
    traces/             chunk outputs kept for spot-checks (traces.py)

"Durable" means: write a temporary file, fsync it, rename it over the target, fsync the
directory (``aeamc.shared.runtime.files.atomic_write``). After a crash the file holds
either the old or the new content, never a mix.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from aeamc.shared.identity import check_key_matches_id, parse_public_key
from aeamc.shared.runtime.files import atomic_write

KEY_FILE = "identity.key"
SEQ_FILE = "seq"
COORDINATOR_FILE = "coordinator.json"
STATUS_FILE = "status.json"
QUEUE_DIR = "queue"
ABANDONED_DIR = "abandoned"
OUTBOX_DIR = "outbox"
REJECTED_DIR = "rejected"
TRACES_DIR = "traces"


class StateError(Exception):
    """The state directory holds something the agent must not use or overwrite."""


def read_json(path: Path) -> Any | None:
    """The JSON in ``path``, or ``None`` if it does not exist."""
    try:
        return json.loads(path.read_bytes())
    except FileNotFoundError:
        return None


def ensure_dir(path: Path, mode: int = 0o700) -> Path:
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    return path


class SeqCounter:
    """Heartbeat ``seq``: strictly increasing for the life of the identity.

    Each value is persisted durably before it is used, so after a crash the next value
    is still above every one a coordinator may have seen.
    """

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / SEQ_FILE
        raw = self.path.read_text().strip() if self.path.exists() else "0"
        if not raw.isdigit():
            raise StateError(f"{self.path}: expected a decimal counter, found {raw[:20]!r}")
        self.last = int(raw)

    def next(self) -> int:
        value = self.last + 1
        atomic_write(self.path, f"{value}\n".encode(), mode=0o644)
        self.last = value
        return value

    def skip_past(self, seen: int) -> None:
        """The coordinator saw ``seen`` already (state restored from a backup?)."""
        if seen >= self.last:
            atomic_write(self.path, f"{seen}\n".encode(), mode=0o644)
            self.last = seen


@dataclass(frozen=True)
class CoordinatorPin:
    """The coordinator this agent enrolled with; its key is trusted from then on (TOFU)."""

    coordinator_id: str
    public_key: str
    cluster_id: int | None
    state: str
    url: str | None = None
    #: SHA-256 of the coordinator's CA certificate (``tls/ca.pem``), pinned with the key.
    ca_fingerprint: str | None = None

    @property
    def public_key_bytes(self) -> bytes:
        return parse_public_key(self.public_key)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def load(cls, state_dir: Path) -> CoordinatorPin | None:
        path = state_dir / COORDINATOR_FILE
        data = read_json(path)
        if data is None:
            return None
        try:
            url = data.get("url")
            if isinstance(url, str) and url.startswith("http://"):
                # Saved before the coordinator spoke TLS only: same host and port.
                data["url"] = "https://" + url[len("http://") :]
            pin = cls(**data)
            check_key_matches_id(pin.public_key_bytes, pin.coordinator_id)
        except Exception as exc:
            raise StateError(f"{path}: not a valid coordinator pin ({exc})") from None
        return pin

    def save(self, state_dir: Path) -> None:
        atomic_write(
            state_dir / COORDINATOR_FILE,
            json.dumps(self.to_json(), indent=2).encode() + b"\n",
            mode=0o644,
        )


def write_status(state_dir: Path, status: dict[str, Any]) -> None:
    """What ``aeamc-agent status`` shows while the daemon runs (atomic, not fsynced)."""
    atomic_write(
        state_dir / STATUS_FILE,
        json.dumps(status, indent=2).encode() + b"\n",
        mode=0o644,
        durable=False,
    )
