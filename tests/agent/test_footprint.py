"""What an idle agent holds: ``aeamc-agent run`` as installed is a launcher that loads none
of the daemon's libraries (and refuses what the daemon refuses, with its status); the
daemon loads what heartbeats need, not TUF, zeroconf or cryptography (its certificate
work runs in a helper process); and its heartbeats share one TLS connection to the real
coordinator."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from tests.support.agent import CLI, AgentProcess
from tests.support.coordinator import (
    CoordinatorProcess,
    env_without_coverage,
)
from tests.support.imports import modules_after
from tests.support.waiting import wait_for

#: What only the daemon needs: the HTTP stack, signatures, certificates, telemetry.
DAEMON_ONLY = ("aiohttp", "nacl", "cryptography", "psutil", "zeroconf", "tuf")


def test_the_launcher_path_imports_none_of_the_daemons_libraries() -> None:
    modules = modules_after(
        "import aeamc.agent.entry, aeamc.agent.launcher, aeamc.agent.config, aeamc.agent.slots"
    )
    loaded = {m.split(".")[0] for m in modules}
    assert not loaded & set(DAEMON_ONLY), loaded & set(DAEMON_ONLY)
    assert "aeamc.shared.messages" not in modules


def test_the_daemon_loads_neither_updates_nor_mdns_nor_cryptography(tmp_path: Path) -> None:
    agent = AgentProcess(tmp_path / "agent", coordinator_url="https://127.0.0.1:9", mdns=False)
    agent.init()
    code = textwrap.dedent(
        f"""
        import asyncio, json, sys
        from pathlib import Path
        from aeamc.agent.config import load_config
        from aeamc.agent.daemon import Agent
        async def idle():
            agent = Agent(load_config(Path({str(agent.config_path)!r})))
            await agent.start()
            await asyncio.sleep(0.3)
            assert agent.updater is not None  # under a launcher: updates are checked
            await agent.stop()
        asyncio.run(idle())
        print(json.dumps(sorted(sys.modules)))
        """
    )
    env = env_without_coverage() | {"AEAMC_AGENT_LAUNCHER": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    loaded = {m.split(".")[0] for m in json.loads(out.stdout.splitlines()[-1])}
    assert {"aiohttp", "nacl"} <= loaded
    # It tried to enroll (the coordinator is away): the key and its request were made by
    # the certificate helper, not in the daemon.
    assert not loaded & {"tuf", "installer", "zeroconf", "prometheus_client", "cryptography"}
    assert (agent.state_dir / "tls" / "key.pem").exists()


def test_what_the_command_line_sends_to_the_launcher() -> None:
    from aeamc.agent.entry import _as_run

    assert _as_run(["--config", "a.toml", "run"]) == ("a.toml", 0)
    assert _as_run(["--config=a.toml", "-vv", "--verbose", "run"]) == ("a.toml", 3)
    assert _as_run(["run"]) == (None, 0)
    # Anything else is cli.py's: other commands, help, typos, a missing value.
    for argv in (["status"], ["run", "-h"], ["--config"], ["-x", "run"], ["daemon"], []):
        assert _as_run(argv) is None, argv


def test_run_with_updates_off_is_the_daemon_alone(tmp_path: Path) -> None:
    """No launcher to keep slim: `run` is `daemon`, which refuses a bad key itself."""
    env = {k: v for k, v in os.environ.items() if k != "AEAMC_SIMULATED_TELEMETRY"}
    agent = AgentProcess(
        tmp_path / "agent",
        coordinator_url="https://127.0.0.1:9",
        mdns=False,
        settings={"updates": {"enabled": False}},
    )
    agent.init()
    (agent.state_dir / "identity.key").chmod(0o644)
    out = _run(agent.config_path, env)
    assert out.returncode == 78 and "chmod 600" in out.stderr
    assert "usage" not in out.stderr
    version = subprocess.run([*CLI, "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("aeamc-agent ")


def _run(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--config", str(config), "run"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env=env,
    )


def test_run_refuses_a_bad_configuration_with_status_78(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AEAMC_SIMULATED_TELEMETRY"}
    bad = tmp_path / "bad.toml"
    bad.write_text("[energy]\nmax_temp_c = 'hot'\n")
    out = _run(bad, env)
    assert out.returncode == 78 and "energy.max_temp_c" in out.stderr
    assert _run(tmp_path / "missing.toml", env).returncode == 78
    # An identity key with loose permissions: the daemon refuses it, the launcher says so.
    agent = AgentProcess(tmp_path / "agent", coordinator_url="https://127.0.0.1:9", mdns=False)
    agent.init()
    (agent.state_dir / "identity.key").chmod(0o644)
    out = _run(agent.config_path, env)
    assert out.returncode == 78 and "chmod 600" in out.stderr


class Relay:
    """A TCP relay to ``port`` that counts the connections made through it."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                downstream, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            upstream = socket.create_connection(("127.0.0.1", self.target))
            for a, b in ((downstream, upstream), (upstream, downstream)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.listener.close()


def _last_seq(coord: CoordinatorProcess, device_id: str) -> int:
    status, body = coord.request("GET", f"/v1/devices/{device_id}", token=coord.token("operator"))
    return int(body["last_seq"]) if status == 200 else -1


def _mapped_packages(pid: int) -> set[str]:
    """Packages whose compiled extensions are mapped into process ``pid``."""
    text = Path(f"/proc/{pid}/maps").read_text()
    return {name for name in DAEMON_ONLY if f"/{name}/" in text}


@pytest.mark.timeout(120)
def test_heartbeats_share_one_tls_connection_and_the_launcher_stays_slim(
    coordinator: CoordinatorProcess, tmp_path: Path
) -> None:
    status, body = coordinator.request(
        "POST", "/v1/tokens", {"role": "enroll", "uses": 1}, token=coordinator.token("operator")
    )
    assert status == 201, body
    relay = Relay(coordinator.port)
    agent = AgentProcess(
        tmp_path / "agent",
        coordinator_url=f"https://127.0.0.1:{relay.port}",
        token=body["token"],
        mdns=False,
        heartbeat_interval_s=0.3,
    )
    try:
        agent.start()
        assert agent.process is not None
        wait_for(lambda: _last_seq(coordinator, agent.device_id) >= 1, 60)
        # Enrollment went without a client certificate; heartbeats go with the one issued.
        before, seq = relay.connections, _last_seq(coordinator, agent.device_id)
        wait_for(lambda: _last_seq(coordinator, agent.device_id) >= seq + 4, 60)
        assert relay.connections == before
        daemon = agent.status_file()["pid"]
        assert daemon != agent.process.pid
        # The service process is the launcher: no HTTP, crypto or telemetry library in it.
        assert _mapped_packages(agent.process.pid) == set()
        # Enrolled, with its certificate: cryptography was only ever in the helper.
        assert _mapped_packages(daemon) == {"aiohttp", "nacl", "psutil"}
        # Restarted, it keeps its certificate (no request for a new one) and heartbeats on.
        serial = agent.status_file()["tls"]["certificate"]["serial"]
        agent.stop()
        agent.start()
        seq = _last_seq(coordinator, agent.device_id)
        wait_for(lambda: _last_seq(coordinator, agent.device_id) >= seq + 2, 60)
        assert agent.status_file()["tls"]["certificate"]["serial"] == serial
    finally:
        agent.stop()
        relay.close()
