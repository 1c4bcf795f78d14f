"""The packaged daemons under their units' seccomp sandbox, talking to each other.

systemd is not PID 1 here, so the part of the sandbox that can break a Python program
in non-obvious ways — ``SystemCallFilter=`` and ``MemoryDenyWriteExecute=`` (cffi,
ctypes) — is applied by tests/packaging/seccomp.py exactly as systemd loads it, to the
unpacked packages' own venvs, as an unprivileged user. Both report READY=1 over
``$NOTIFY_SOCKET`` (``Type=notify``), and the agent enrolls with the coordinator.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import seccomp
from .conftest import AGENT, COORDINATOR, NOBODY, REPO

# Building the packages (twice, for upgrades) and installing them in a container take
# longer than the suite's default 300 s on a machine busy with other tests.
pytestmark = pytest.mark.timeout(900)

UNITS = REPO / "packaging" / "systemd"

if (reason := seccomp.available()) is not None:
    pytest.skip(reason, allow_module_level=True)


class Service:
    """One packaged command line, run like its unit runs it."""

    def __init__(self, tree: Path, package: str, command: str, config: Path) -> None:
        venv = tree / "opt" / package
        self.argv = [str(venv / "bin" / "python"), str(venv / "bin" / command)]
        self.config = config
        self.unit = UNITS / f"{package}.service"
        self.user = NOBODY if os.geteuid() == 0 else None

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.argv, "--config", str(self.config), *args],
            capture_output=True,
            text=True,
            preexec_fn=seccomp.preexec(self.unit, self.user),
            timeout=60,
            check=False,
        )
        assert result.returncode >= 0, f"killed by signal {-result.returncode}: {result.stderr}"
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def start(self, notify: Path) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*self.argv, "--config", str(self.config), "run"],
            env={**os.environ, "NOTIFY_SOCKET": str(notify)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=seccomp.preexec(self.unit, self.user),  # noqa: PLW1509
        )


def own(path: Path) -> Path:
    if os.geteuid() == 0:
        os.chown(path, *NOBODY)
    return path


@pytest.fixture
def workdir(shared_tmp: Path, request: pytest.FixtureRequest) -> Path:
    path = shared_tmp / f"run-{request.node.name}"
    path.mkdir()
    return own(path)


def ready(sock: socket.socket, proc: subprocess.Popen[str], timeout: float = 60) -> bytes:
    """The first notification; fails as soon as the process exits without one."""
    sock.settimeout(0.2)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            return sock.recv(4096)
        except TimeoutError:
            continue
    proc.kill()
    pytest.fail(f"no READY=1 (exit {proc.wait()}):\n{proc.communicate()[1]}")


def notify_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    own(path)
    return sock


@pytest.fixture
def stopper() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{err}"
    return err


def test_agent_and_coordinator_run_sandboxed(
    extracted: dict[str, Path], workdir: Path, stopper: list[subprocess.Popen[str]]
) -> None:
    coordinator = Service(
        extracted[COORDINATOR], COORDINATOR, "aeamc-coordinator", workdir / "coordinator.toml"
    )
    coordinator("init", "--state-dir", str(workdir / "coordinator"), "--port", "0")
    config = coordinator.config.read_text()
    coordinator.config.write_text(config.replace("mdns = true", "mdns = false"))
    with notify_socket(workdir / "coordinator.notify") as sock:
        proc = coordinator.start(workdir / "coordinator.notify")
        stopper.append(proc)
        assert ready(sock, proc) == b"READY=1"
    status = json.loads(coordinator("status", "--json").stdout)
    assert status["health"]["status"] == "ok"
    port = int((workdir / "coordinator" / "coordinator.port").read_text())
    token = json.loads(coordinator("token", "create", "--role", "enroll").stdout)["token"]

    agent = Service(extracted[AGENT], AGENT, "aeamc-agent", workdir / "agent.toml")
    agent.config.write_text(
        f'state_dir = "{workdir / "agent"}"\n'
        f'coordinator_url = "https://127.0.0.1:{port}"\n'
        f'enrollment_token = "{token}"\n'
        '[listen]\nhost = "127.0.0.1"\nport = 0\n'
        "[mdns]\nenabled = false\n"
    )
    own(agent.config)
    agent("init")
    offline = json.loads(agent("status", "--json").stdout)
    with notify_socket(workdir / "agent.notify") as sock:
        proc = agent.start(workdir / "agent.notify")
        stopper.append(proc)
        assert b"READY=1" in ready(sock, proc).split(b"\n")
    deadline = time.monotonic() + 30
    devices: list[dict[str, object]] = []
    while time.monotonic() < deadline and not devices:
        devices = json.loads(coordinator("devices", "list", "--json").stdout)
        time.sleep(0.3)
    assert [d["device_id"] for d in devices] == [offline["device_id"]]
    assert json.loads(agent("status", "--json").stdout)["running"] is True
    stop(proc)
    stop(stopper[0])
