"""``aeamc-agent`` as an owner runs it: init, status, run, signals, exit codes, footprint."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from aeamc.agent import __version__
from aeamc.agent.cli import EX_CANTCREAT, EX_CONFIG, EX_USAGE, main
from aeamc.agent.keystore import KeyFileError, load_identity
from aeamc.agent.telemetry import SIMULATION_ENV

from .conftest import GOOD, eventually, write_profile
from .fakecoord import FakeCoordinator

CLI = [sys.executable, "-m", "aeamc.agent.cli"]
HEAVY = {"web3", "sqlite_utils", "sqlite3", "numpy"}


def clean_env(**extra: str) -> dict[str, str]:
    # Coverage measurement of subprocesses imports sqlite3 itself; footprint checks run without.
    env = {k: v for k, v in os.environ.items() if k != SIMULATION_ENV}
    return env | extra


def init(tmp_path: Path, *args: str) -> tuple[int, Path]:
    config = tmp_path / "agent.toml"
    rc = main(["--config", str(config), "init", "--state-dir", str(tmp_path / "state"), *args])
    return rc, config


def test_version() -> None:
    out = subprocess.run([*CLI, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"aeamc-agent {__version__}"


def test_usage_errors_exit_64(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["frobnicate"], ["status", "--bogus"]):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == EX_USAGE
    assert "usage:" in capsys.readouterr().err


def test_init_creates_private_identity_and_config(tmp_path: Path, capsys) -> None:
    rc, config = init(tmp_path, "--coordinator-url", "https://192.0.2.1:8480", "--token", "abc")
    assert rc == 0
    state = tmp_path / "state"
    key_file = state / "identity.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE(config.stat().st_mode) == 0o600  # it holds the token
    device_id = load_identity(state).device_id
    assert f"device id {device_id}" in capsys.readouterr().out
    text = config.read_text()
    assert (
        'coordinator_url = "https://192.0.2.1:8480"' in text and 'enrollment_token = "abc"' in text
    )


def test_init_never_overwrites_an_identity(tmp_path: Path, capsys) -> None:
    rc, config = init(tmp_path)
    assert rc == 0
    key_file = tmp_path / "state" / "identity.key"
    before = key_file.read_bytes()
    assert main(["--config", str(config), "init"]) == EX_CANTCREAT
    assert "refusing to replace" in capsys.readouterr().err
    assert key_file.read_bytes() == before
    # Options that would change an existing config are refused too.
    assert main(["--config", str(config), "init", "--state-dir", "/elsewhere"]) == EX_USAGE
    # --force makes a new device, deliberately.
    assert main(["--config", str(config), "init", "--force"]) == 0
    assert key_file.read_bytes() != before
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert "new device" in capsys.readouterr().err


def test_init_with_a_bad_option_or_config(tmp_path: Path) -> None:
    rc, _ = init(tmp_path, "--coordinator-url", "gopher://x")
    assert rc == EX_CONFIG
    bad = tmp_path / "bad.toml"
    bad.write_text("nonsense = 1")
    assert main(["--config", str(bad), "init"]) == EX_CONFIG
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert main(["--config", str(blocked / "agent.toml"), "init"]) == EX_CANTCREAT


def test_key_file_with_loose_permissions_is_refused(tmp_path: Path, capsys) -> None:
    _, config = init(tmp_path)
    key_file = tmp_path / "state" / "identity.key"
    os.chmod(key_file, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        load_identity(tmp_path / "state")
    assert main(["--config", str(config), "run"]) == EX_CONFIG
    assert "chmod 600" in capsys.readouterr().err
    # status still works and says why the identity cannot be used.
    assert main(["--config", str(config), "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["device_id"] is None and "chmod 600" in status["identity_error"]


def test_malformed_key_file(tmp_path: Path) -> None:
    init(tmp_path)
    key_file = tmp_path / "state" / "identity.key"
    key_file.write_text("not a key")
    with pytest.raises(KeyFileError, match="64 hex"):
        load_identity(tmp_path / "state")
    key_file.unlink()
    with pytest.raises(KeyFileError, match="aeamc-agent init"):
        load_identity(tmp_path / "state")


def test_bad_config_exits_78(tmp_path: Path, capsys) -> None:
    config = tmp_path / "agent.toml"
    config.write_text("[energy]\nmax_temp_c = 'hot'\n")
    for command in ("run", "status"):
        assert main(["--config", str(config), command]) == EX_CONFIG
        assert "energy.max_temp_c" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.toml"), "status"]) == EX_CONFIG


def test_simulated_telemetry_needs_the_env_var(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv(SIMULATION_ENV, raising=False)
    _, config = init(tmp_path)
    write_profile(tmp_path / "p.json", **GOOD)
    config.write_text(
        config.read_text() + '\n[telemetry]\nsource = "simulated"\nprofile = "p.json"\n'
    )
    assert main(["--config", str(config), "run"]) == EX_CONFIG
    assert SIMULATION_ENV in capsys.readouterr().err
    # status shows the configured source and why it cannot read it.
    assert main(["--config", str(config), "status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["telemetry_source"] == "simulated"
    assert SIMULATION_ENV in status["telemetry_error"] and status["telemetry"] is None
    assert main(["--config", str(config), "status"]) == 0
    assert "unknown (no telemetry)" in capsys.readouterr().out


def test_status_text_when_stopped(tmp_path: Path, capsys) -> None:
    _, config = init(tmp_path)
    assert main(["--config", str(config), "status"]) == 0
    out = capsys.readouterr().out
    assert "daemon:" in out and "not running" in out
    assert "battery:" in out and "outbox:" in out


async def test_run_status_and_sigterm(tmp_path: Path) -> None:
    """The daemon as a real process: status while it runs, clean exit on SIGTERM."""
    fake_coordinator = await FakeCoordinator().start()
    try:
        config = tmp_path / "agent.toml"
        write_profile(tmp_path / "profile.json", **GOOD)
        rc = main(
            [
                "--config",
                str(config),
                "init",
                "--state-dir",
                str(tmp_path / "state"),
                "--coordinator-url",
                fake_coordinator.url,
            ]
        )
        assert rc == 0
        config.write_text(
            config.read_text().replace('host = "0.0.0.0"', 'host = "127.0.0.1"')
            + textwrap.dedent(
                """
                [heartbeat]
                interval_s = 0.2
                [telemetry]
                source = "simulated"
                profile = "profile.json"
                [mdns]
                enabled = false
                [demo]
                cheat_fraction = 0.25
                """
            )
        )
        env = clean_env(**{SIMULATION_ENV: "1"})
        proc = await asyncio.create_subprocess_exec(
            *CLI, "--config", str(config), "run", env=env, stderr=asyncio.subprocess.PIPE
        )
        try:
            await eventually(lambda: len(fake_coordinator.heartbeats) >= 2, timeout=15)
            out = await asyncio.create_subprocess_exec(
                *CLI,
                "--config",
                str(config),
                "status",
                "--json",
                env=env,
                stdout=asyncio.subprocess.PIPE,
            )
            stdout, _ = await out.communicate()
            status = json.loads(stdout)
            # `run` is the update launcher; the daemon it supervises names it.
            assert status["running"] is True and status["launcher_pid"] == proc.pid
            assert status["telemetry_source"] == "simulated"
            assert status["demo_cheater"] is True and status["cheat_fraction"] == 0.25
            assert status["coordinator"]["state"] == "active"
            assert status["flags"] == {"fast_heartbeats": True}
            assert status["telemetry"]["battery_pct"] == 80
        finally:
            proc.send_signal(signal.SIGTERM)
            _, stderr = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, stderr.decode()
        log = stderr.decode()
        assert "SIMULATED TELEMETRY" in log and "DEMO CHEATER" in log
        assert '"level": "info"' in log and "shutting down" in log
        final = json.loads((tmp_path / "state" / "status.json").read_text())
        assert final["running"] is False
    finally:
        await fake_coordinator.stop()


def test_idle_agent_footprint(tmp_path: Path) -> None:
    """No web3, sqlite or numpy: on import, and in a started, idle daemon."""
    rc, config = init(tmp_path, "--coordinator-url", "https://127.0.0.1:9")
    assert rc == 0
    config.write_text(config.read_text() + '\n[mdns]\ninterfaces = ["127.0.0.1"]\n')
    code = textwrap.dedent(
        f"""
        import asyncio, json, sys
        import aeamc.agent.daemon
        imported = sorted(sys.modules)
        from aeamc.agent.config import load_config
        from aeamc.agent.daemon import Agent
        async def idle():
            agent = Agent(load_config(__import__("pathlib").Path({str(config)!r})))
            await agent.start()
            await asyncio.sleep(0.5)
            await agent.stop()
        asyncio.run(idle())
        print(json.dumps([imported, sorted(sys.modules)]))
        """
    )
    env = {k: v for k, v in clean_env().items() if not k.startswith("COVERAGE")}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    on_import, idle = (set(m) for m in json.loads(out.stdout.splitlines()[-1]))
    assert "aiohttp" in on_import and "aeamc.agent.daemon" in on_import
    assert not on_import & HEAVY, on_import & HEAVY
    assert not idle & HEAVY, idle & HEAVY


def test_port_in_use_is_a_runtime_failure(tmp_path: Path, capfd) -> None:
    import socket

    _, config = init(tmp_path, "--coordinator-url", "https://127.0.0.1:9")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config.write_text(
            config.read_text()
            .replace('host = "0.0.0.0"', 'host = "127.0.0.1"')
            .replace("port = 0", f"port = {port}")
            + "\n[mdns]\nenabled = false\n"
        )
        # `run` is the launcher: the daemon it starts says why, on the same stderr.
        assert main(["--config", str(config), "run"]) == 1
    assert "cannot run" in capfd.readouterr().err
