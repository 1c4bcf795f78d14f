"""A real device agent process for integration tests and local demos.

``AgentProcess(root, ...)`` writes an agent configuration under ``root`` (state directory
``root/state``, API on 127.0.0.1 with a free port, fast heartbeats, mDNS on the loopback
interface unless told otherwise), runs ``aeamc-agent init`` once, then ``aeamc-agent run``
as a subprocess (``python -m aeamc.agent``: what the installed command runs). It can be
stopped (SIGTERM), killed (SIGKILL, like a crash or power loss) and started again on the
same state directory.

Options: a fixed ``coordinator_url`` (unset: the agent finds the coordinator over mDNS),
an enrollment ``token``, a simulated telemetry ``profile`` (its steps; the agent then
runs with ``AEAMC_SIMULATED_TELEMETRY=1``), the demo ``cheat_fraction`` (needs a
profile), and ``settings`` for any other key (``{"max_queued_tasks": 8, "network":
{"retry_max_s": 2.0}}``).

Every method is synchronous; from a coroutine call the waiting ones through
``asyncio.to_thread`` so the event loop keeps serving.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from aeamc.agent.keystore import load_identity
from aeamc.shared.runtime.tls import client_context

from .commands import run_module
from .coordinator import merge
from .daemon import DaemonFolder
from .waiting import wait_for

AGENT_MODULE = "aeamc.agent"
CLI = [sys.executable, "-m", AGENT_MODULE]
SIMULATION_ENV = "AEAMC_SIMULATED_TELEMETRY"
T = TypeVar("T")

#: Quick enough for tests, slow enough to stay light with several agents on one host.
FAST_SETTINGS: dict[str, Any] = {
    "listen": {"host": "127.0.0.1", "port": 0},
    "heartbeat": {"interval_s": 1.0, "jitter": 0.1, "enroll_retry_s": 1.0},
    "telemetry": {"interval_s": 0.5},
    "network": {
        "request_timeout_s": 5.0,
        "retry_initial_s": 0.2,
        "retry_max_s": 1.0,
        "shutdown_grace_s": 5.0,
    },
}

#: A healthy device on battery, for simulated profiles.
GOOD_TELEMETRY = {"battery_pct": 80, "charging": False, "cpu_temp_c": 45, "cpu_load_permille": 100}


def toml_document(data: dict[str, Any]) -> str:
    """TOML for a dict of scalars, lists of strings and one level of sections."""
    top = [f"{k} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    sections = []
    for section, values in data.items():
        if isinstance(values, dict):
            sections.append(f"\n[{section}]")
            sections += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
    return "\n".join(top + sections) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, Path):
        value = str(value)
    return json.dumps(value)  # strings, numbers, booleans and lists read the same in TOML


@dataclass
class AgentProcess(DaemonFolder):
    config_name = "agent.toml"
    coordinator_url: str | None = None
    token: str | None = None
    #: Simulated telemetry: the profile's steps, or a whole profile document (a dict).
    profile: list[dict[str, Any]] | dict[str, Any] | None = None
    cheat_fraction: float = 0.0
    mdns: bool = True
    mdns_interfaces: tuple[str, ...] = ("127.0.0.1",)
    heartbeat_interval_s: float = 1.0
    settings: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    device_id: str = ""

    # --- paths ----------------------------------------------------------------------------

    @property
    def profile_path(self) -> Path:
        return self.root / "profile.json"

    def files(self, subdir: str, pattern: str = "*.json") -> list[Path]:
        """Files of a state subdirectory (``outbox``, ``rejected``, ``queue``...), sorted."""
        return sorted((self.state_dir / subdir).glob(pattern))

    # --- set-up -----------------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"state_dir": str(self.state_dir)}
        if self.coordinator_url:
            settings["coordinator_url"] = self.coordinator_url
        if self.token:
            settings["enrollment_token"] = self.token
        settings = merge(settings, FAST_SETTINGS)
        settings = merge(settings, {"heartbeat": {"interval_s": self.heartbeat_interval_s}})
        settings["mdns"] = {"enabled": self.mdns, "interfaces": list(self.mdns_interfaces)}
        if self.profile is not None:
            settings["telemetry"] = {
                **settings["telemetry"],
                "source": "simulated",
                "profile": str(self.profile_path),
            }
        if self.cheat_fraction:
            settings["demo"] = {"cheat_fraction": self.cheat_fraction}
        return merge(settings, self.settings)

    def init(self) -> str:
        """Write the config (and profile), create the identity once; the device id.

        On a root that was set up before (another run of a demo, say) the existing
        identity is kept: the agent stays the same device.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        if self.profile is not None and not self.profile_path.exists():
            self.set_profile(self.profile)
        self.config_path.write_text(toml_document(self.config()))
        if (self.state_dir / "identity.key").exists():
            self.device_id = load_identity(self.state_dir).device_id
            return self.device_id
        out = self.cli("init")
        self.device_id = next(
            line.split()[-1] for line in out.stdout.splitlines() if line.startswith("device id")
        )
        return self.device_id

    def set_profile(self, profile: list[dict[str, Any]] | dict[str, Any]) -> None:
        """Replace the telemetry profile atomically; playback restarts from its first step."""
        data = profile if isinstance(profile, dict) else {"steps": profile}
        tmp = self.profile_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.profile_path)

    def process_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != SIMULATION_ENV}
        if self.profile is not None:
            env[SIMULATION_ENV] = "1"
        return env | self.env

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = run_module(
            AGENT_MODULE, "--config", str(self.config_path), *args, env=self.process_env()
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"aeamc-agent {' '.join(args)} failed: {proc.stderr}")
        return proc

    # --- life cycle ---------------------------------------------------------------------

    def run_command(self) -> list[str]:
        """The command line of ``aeamc-agent run`` on this configuration."""
        return [*CLI, "--config", str(self.config_path), "run"]

    def start(self, timeout: float = 30) -> None:
        """Runs :meth:`run_command`; returns once the daemon serves its API."""
        if not self.device_id:
            self.init()
        self.log = self.root / f"agent-{time.time_ns() // 1_000_000}.log"
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.run_command(),
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.process_env(),
            )
        pid = self.process.pid

        def serving() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"aeamc-agent exited: {self.log_text()}")
            status = self.status_file()
            # `run` is the launcher (docs/updates.md): the daemon it starts names it.
            ours = status and pid in (status.get("pid"), status.get("launcher_pid"))
            return bool(ours and status.get("running"))

        wait_for(serving, timeout, 0.05)

    def kill(self) -> None:
        """kill -9: no clean-up at all, like a crash or a power cut.

        Both the launcher and the daemon it supervises die at once, and this returns only
        when both are gone: the daemon would die of its launcher's death too
        (``PR_SET_PDEATHSIG``), but a few milliseconds later, still able to write.
        """
        if self.process is None or self.process.poll() is not None:
            return
        status = self.status_file() or {}
        daemon = status.get("pid") if status.get("launcher_pid") == self.process.pid else None
        for pid in (daemon, self.process.pid):
            if isinstance(pid, int):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        self.process.wait(timeout=30)
        if isinstance(daemon, int):
            wait_for(lambda: not _alive(daemon), 30, 0.01)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; the exit status."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
                raise
        return self.process.returncode

    def signal_daemon(self, sig: int) -> None:
        """Signal the daemon itself (``process`` is ``run``'s launcher, which supervises it)."""
        status = self.status_file()
        assert status and isinstance(status.get("pid"), int), "the daemon is not running"
        os.kill(status["pid"], sig)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # --- looking at it -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``aeamc-agent status --json`` (works whether or not the daemon runs)."""
        return json.loads(self.cli("status", "--json").stdout)  # type: ignore[no-any-return]

    def status_file(self) -> dict[str, Any] | None:
        """The running daemon's ``status.json``, read directly (cheap, for polling)."""
        try:
            data = json.loads((self.state_dir / "status.json").read_bytes())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    @property
    def endpoint(self) -> str | None:
        status = self.status_file()
        return status.get("endpoint") if status else None

    def health(self) -> dict[str, Any]:
        """``GET /v1/health`` of the running agent."""
        assert self.endpoint, "the agent is not serving"
        # Health is public: no need to verify who answers it.
        context = client_context(ca_pem=None)
        with urllib.request.urlopen(
            self.endpoint + "/v1/health", timeout=10, context=context
        ) as resp:
            return json.loads(resp.read())  # type: ignore[no-any-return]

    def log_text(self) -> str:
        """Everything every run of this agent logged so far."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.root.glob("agent-*.log")))

    def wait_for(self, predicate: Callable[[], T], timeout: float = 30, interval: float = 0.1) -> T:
        def checked() -> T:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"aeamc-agent exited: {self.log_text()[-4000:]}")
            return predicate()

        # What the daemon said meanwhile is what explains a timeout seen only on a busier host.
        return wait_for(checked, timeout, interval, explain=lambda: self.log_text()[-6000:])

    def wait_status(
        self, predicate: Callable[[dict[str, Any]], Any], timeout: float = 30
    ) -> dict[str, Any]:
        """Until the daemon's status satisfies ``predicate``; that status."""

        def check() -> dict[str, Any] | None:
            status = self.status_file()
            return status if status and predicate(status) else None

        result: dict[str, Any] = self.wait_for(check, timeout, 0.05)
        return result

    def close(self) -> None:
        """Make sure no process is left behind (for ``finally`` blocks and fixtures)."""
        if self.running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.stop(timeout=15)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting to be reaped has stopped running)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
