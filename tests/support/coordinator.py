"""A real coordinator process for integration tests: `aeamc-coordinator init` then `run`,
on a free loopback port, with a state directory of its own.

Its API is HTTPS only: ``request`` trusts the coordinator's CA and, for a device route,
presents the client certificate of the ``SimDevice`` whose id the body carries (what
that device's agent would do); ``device=None`` sends without one."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import aiohttp

from aeamc.shared import microblock
from aeamc.shared.runtime.tls import client_context

from . import stores
from .commands import run_module
from .daemon import DaemonFolder
from .device import SimDevice, device_for_body
from .waiting import wait_for

AUTO: Any = object()

FAST_SETTINGS = {
    # Many simulated devices share 127.0.0.1: the per-address connection cap is raised.
    "server": {
        "host": "127.0.0.1",
        "port": 0,
        "mdns": False,
        "max_connections_per_address": 100000,
        # One process: the tests of several worker processes (coordinator/test_workers.py,
        # the demo network) ask for them.
        "workers": 1,
        # A test machine running many coordinators at once stalls each of them now and
        # then; shedding on the event loop's lateness is tested where it is asked for
        # (coordinator/test_overload.py).
        "max_queue_delay_ms": 0,
    },
    "scheduler": {"tick_s": 0.2, "push_timeout_s": 5.0},
    "blocks": {"interval_s": 0.5},
    # Every task of a new device is checked, so a test's first proofs reach a verdict;
    # the sampled rate itself is tested in tests/property/test_check_rate_properties.py.
    "spot_checks": {"retry_s": 0.5, "catch_probability": 1.0},
}


def _toml(data: dict[str, Any]) -> str:
    lines = []
    for key, value in data.items():
        if not isinstance(value, dict):
            lines.append(f"{key} = {json.dumps(value)}")
    for section, values in data.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            for k, v in values.items():
                lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for k, v in extra.items():
        if isinstance(v, dict):
            out.setdefault(k, {}).update(v)
        else:
            out[k] = v
    return out


@dataclass
class CoordinatorProcess(DaemonFolder):
    config_name = "coordinator.toml"
    settings: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    log: Path | None = None
    _ssl: tuple[str, ssl.SSLContext] | None = None
    #: The environment of its commands and of the daemon (None: this process's); e.g. a
    #: PYTHONPATH that runs another release of the code on the same folder.
    env: dict[str, str] | None = None
    #: What :meth:`run_command` runs, and where (None: this process's working directory).
    daemon_module: ClassVar[str] = "aeamc.coordinator.cli"
    run_directory: ClassVar[Path | None] = None

    @property
    def url(self) -> str:
        host = self.settings.get("server", {}).get("host", "127.0.0.1")
        return f"https://{host}:{self.port}"

    @property
    def ca_pem(self) -> str:
        return (self.state_dir / "ca" / "ca.pem").read_text()

    def ssl_context(self, device: SimDevice | None = None) -> ssl.SSLContext:
        """Trusting this coordinator's CA; with ``device``, presenting its certificate."""
        if device is not None and device.cert_file is not None:
            return device.client_context()
        ca_pem = self.ca_pem
        if self._ssl is None or self._ssl[0] != ca_pem:
            self._ssl = (ca_pem, client_context(ca_pem=ca_pem))
        return self._ssl[1]

    def session(self, device: SimDevice | None = None) -> Any:
        """An aiohttp session that speaks TLS 1.3 to this coordinator (as ``device``)."""
        import aiohttp

        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ssl_context(device)),
            timeout=aiohttp.ClientTimeout(total=60),
        )

    def token(self, role: str) -> str:
        return (self.state_dir / "tokens" / f"{role}.token").read_text().strip()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = run_module(
            "aeamc.coordinator.cli",
            "--config",
            str(self.config_path),
            *args,
            env=self.env,
            prefix=self.command_prefix(),
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"aeamc-coordinator {args} failed: {proc.stderr}")
        return proc

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        settings = merge(FAST_SETTINGS, self.settings)
        if "database" not in settings and (url := stores.database_url()):
            self.settings = merge(
                self.settings,
                {"database": {"url": url}, "cluster": {"relay_address": "127.0.0.1"}},
            )
            settings = merge(FAST_SETTINGS, self.settings)
        settings = {"state_dir": str(self.state_dir), **settings}
        self.config_path.write_text(_toml(settings))
        self.cli("init")

    def rows(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` read straight from this coordinator's database, whichever store
        it is on (SQLite file or PostgreSQL), as tuples; ``?`` placeholders."""
        url = self.settings.get("database", {}).get("url", "")
        if url:
            from aeamc.coordinator import pgdb

            with pgdb.connect(url) as conn:
                return [tuple(r) for r in pgdb.PgTx(conn).execute(sql, params or [])]
        with contextlib.closing(sqlite3.connect(self.state_dir / "coordinator.db")) as conn:
            return [tuple(r) for r in conn.execute(sql, params or [])]

    def command_prefix(self) -> list[str]:
        """What the daemon and its commands run through (nothing: run here)."""
        return []

    def run_command(self) -> list[str]:
        """The command line of ``aeamc-coordinator run`` on this configuration."""
        return [
            *self.command_prefix(),
            sys.executable,
            "-m",
            self.daemon_module,
            "--config",
            str(self.config_path),
            "run",
        ]

    def log_text(self) -> str:
        """What this run of the coordinator (the supervisor and its workers) logged so far;
        empty before it is started."""
        return self.log.read_text(errors="replace") if self.log is not None else ""

    def start(self, timeout: float = 30) -> None:
        """Runs :meth:`run_command`; returns once the coordinator has written its port."""
        port_file = self.state_dir / "coordinator.port"
        port_file.unlink(missing_ok=True)
        self.log = self.root / f"coordinator-{int(time.time() * 1000)}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.run_command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.run_directory,
                env=self.env,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"coordinator exited: {self.log.read_text()}")
            if port_file.exists() and port_file.read_text().strip():
                self.port = int(port_file.read_text())
                return
            time.sleep(0.05)
        raise AssertionError("coordinator did not start in time")

    def kill(self) -> None:
        """kill -9: no clean-up, exactly like a crash or power loss of the process."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> int:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            return self.process.wait(timeout=30)
        return self.process.returncode if self.process else 0

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        raw_body: bytes | None = None,
        content_type: str = "application/json",
        device: SimDevice | None = AUTO,
    ) -> tuple[int, Any]:
        data = (
            raw_body
            if raw_body is not None
            else (json.dumps(body).encode() if body is not None else None)
        )
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", content_type)
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        if device is AUTO:
            device = device_for_body(body)
        try:
            with urllib.request.urlopen(req, timeout=30, context=self.ssl_context(device)) as resp:
                payload = resp.read()
                status = resp.status
                ctype = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            payload, status, ctype = exc.read(), exc.code, exc.headers.get("Content-Type", "")
        if ctype.startswith("application/json"):
            answer = json.loads(payload)
            if path == "/v1/enroll" and device is not None and status == 202:
                device.accept_enrollment(answer)
            return status, answer
        return status, payload

    def wait_for(self, predicate: Any, timeout: float = 30, interval: float = 0.1) -> Any:
        return wait_for(predicate, timeout, interval)

    # --- the operator's and the client's everyday calls, checked ---------------------------

    def issue_token(self, role: str, **fields: Any) -> str:
        """A new ``role`` token made by the operator (``uses``, ``label``… as ``fields``)."""
        status, body = self.request(
            "POST", "/v1/tokens", {"role": role, **fields}, token=self.token("operator")
        )
        assert status == 201, body
        return str(body["token"])

    def submit_task(self, task: dict[str, Any], role: str = "client") -> str:
        """Submits ``task`` as ``role``; its accepted task id."""
        status, body = self.request("POST", "/v1/tasks", task, token=self.token(role))
        assert status == 202, body
        return str(body["task_id"])

    def get(self, path: str, role: str = "operator") -> tuple[int, Any]:
        """``GET path`` as ``role``: the status and the body, whatever they are."""
        return self.request("GET", path, token=self.token(role))

    def read(self, path: str, role: str = "operator") -> Any:
        """``GET path`` as ``role``, which must answer 200; the JSON body."""
        status, body = self.get(path, role)
        assert status == 200, body
        return body


@contextlib.contextmanager
def running_coordinator(
    root: Path, settings: dict[str, Any] | None = None
) -> Iterator[CoordinatorProcess]:
    """A coordinator initialised under ``root`` and started; stopped when the block ends.

    What every test fixture that wants "a real coordinator" yields from."""
    proc = CoordinatorProcess(root, settings or {})
    proc.init()
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def env_without_coverage() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")}


async def microblock_chain(session: aiohttp.ClientSession, url: str) -> list[microblock.Microblock]:
    """Every microblock the coordinator at ``url`` serves, decoded from its raw bytes, from
    genesis up (for ``microblock.verify_chain``)."""
    async with session.get(f"{url}/v1/microblocks?limit=1000") as resp:
        assert resp.status == 200, await resp.text()
        listing = (await resp.json())["microblocks"]
    out = []
    for b in listing:
        async with session.get(f"{url}/v1/microblocks/{b['height']}/raw") as resp:
            assert resp.status == 200, await resp.text()
            out.append(microblock.decode(await resp.read()))
    return out
