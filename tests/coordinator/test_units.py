"""Coordinator building blocks without a running server: configuration, key files,
storage and its group commit."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import tomllib
from pathlib import Path

import pytest

from aeamc.coordinator.config import (
    ConfigError,
    CoordinatorConfig,
    load_config,
    parse_config,
    render_config,
)
from aeamc.coordinator.db import Database, migrate
from aeamc.coordinator.keys import KeyFileError, create_key_file, load_key_file
from aeamc.coordinator.schema import MIGRATIONS
from aeamc.shared import reputation
from tests.support.commands import run_module
from tests.support.keyfiles import assert_guarded


def test_defaults_render_and_parse_back(tmp_path: Path) -> None:
    config = CoordinatorConfig(state_dir=tmp_path)
    text = render_config(config)
    assert parse_config(tomllib.loads(text)) == config
    assert "interval_s = 10.0" in text and "min_eps = 0.5" in text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"nope": 1}, "nope: unknown setting"),
        ({"server": {"port": "80"}}, "server.port: expected int"),
        ({"server": {"port": 70000}}, "server.port must be 0..65535"),
        ({"server": {"mdns": 1}}, "server.mdns: expected bool"),
        ({"blocks": {"max_receipts": 70000}}, "max_receipts"),
        ({"blocks": []}, "[blocks] must be a table"),
        ({"eps": {"w_battery": 0.9}}, "sum to 1"),
        ({"scheduler": {"port": 1}}, "scheduler.port: unknown setting"),
        ({"state_dir": ""}, "state_dir"),
        ({"spot_checks": {"floor": 2.0}}, "floor"),
        ({"spot_checks": {"catch_fraction": 0.0}}, "spot_checks.catch_fraction must be in"),
        ({"spot_checks": {"catch_within_tasks": 0}}, "spot_checks.catch_within_tasks must be"),
        ({"spot_checks": {"catch_probability": 1.5}}, "spot_checks.catch_probability must be"),
    ],
)
def test_bad_configuration_is_named(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_config(data)


def test_ints_accepted_for_floats_and_relative_state_dir(tmp_path: Path) -> None:
    config = parse_config({"blocks": {"interval_s": 2}, "state_dir": "st"}, base_dir=tmp_path)
    assert config.blocks.interval_s == 2.0 and isinstance(config.blocks.interval_s, float)
    assert config.state_dir == tmp_path / "st"


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        load_config(bad)


def test_key_file_life_cycle(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    key = create_key_file(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_key_file(path).public_key == key.public_key
    assert_guarded(path, create_key_file, load_key_file, KeyFileError, open_mode=0o644)
    path.write_text("zz\n")
    with pytest.raises(KeyFileError, match="not a hex"):
        load_key_file(path)
    path.write_text("00\n")
    with pytest.raises(KeyFileError, match="32 bytes"):
        load_key_file(path)
    with pytest.raises(KeyFileError, match="no key file"):
        load_key_file(tmp_path / "none.key")


def test_migrations_are_versioned(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    assert migrate(conn) == len(MIGRATIONS)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert migrate(conn) == len(MIGRATIONS)  # idempotent
    conn.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    with pytest.raises(RuntimeError, match="newer than this software"):
        migrate(conn)


def test_tokens_and_tasks_from_before_owners_migrate(tmp_path: Path) -> None:
    """Every existing token gets its own owner id; existing tasks get none (operator only)."""
    conn = sqlite3.connect(tmp_path / "db.sqlite", isolation_level=None)
    owners_at = next(i for i, m in enumerate(MIGRATIONS) if any("tokens_owner" in q for q in m.up))
    for migration in MIGRATIONS[:owners_at]:
        for sql in migration.up:
            conn.execute(sql)
    conn.execute(f"PRAGMA user_version={owners_at}")
    for i, role in enumerate(("operator", "client", "client")):
        conn.execute(
            "INSERT INTO tokens (token_hash, role, label, created_at) VALUES (?,?,'same',0)",
            [f"{i:064x}", role],
        )
    conn.execute(
        "INSERT INTO tasks (task_id, kind, params, chunks, replicas, created_at, client, state) "
        "VALUES ('old', 'sha256-chain', '{}', 1, 1, 0, 'same', 'queued')"
    )
    migrate(conn)
    owners = [r[0] for r in conn.execute("SELECT owner FROM tokens")]
    assert len(set(owners)) == 3 and all(len(o) == 8 for o in owners), owners
    assert conn.execute("SELECT owner FROM tasks").fetchall() == [(None,)]
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute(
            "INSERT INTO tokens (token_hash, role, created_at, owner) VALUES ('x','client',0,?)",
            [owners[1]],
        )


async def test_group_commit_isolates_failing_writes(tmp_path: Path) -> None:
    db = Database(tmp_path / "c.db")
    db.open()
    try:

        def good(i: int):
            return lambda d: d.execute("INSERT INTO meta (key, value) VALUES (?, 'v')", [f"k{i}"])

        def bad(d):
            d.execute("INSERT INTO meta (key, value) VALUES ('poison', 'v')")
            raise ValueError("refused")

        results = await asyncio.gather(
            *(db.write(good(i)) for i in range(50)), db.write(bad), return_exceptions=True
        )
        assert sum(isinstance(r, ValueError) for r in results) == 1
        keys = await db.read(lambda d: [r["key"] for r in d.query("SELECT key FROM meta")])
        assert sorted(keys) == sorted(f"k{i}" for i in range(50))
        assert db.commits < 51  # batched into fewer transactions than writes
        assert db.write_sync(lambda d: 7) == 7
        assert db.read_sync(lambda d: d.execute("PRAGMA journal_mode").fetchone()[0]) == "wal"
    finally:
        db.close()


def test_reputation_and_check_rate() -> None:
    new = reputation.Record()
    assert reputation.reputation(new) == 0.5
    trusted = reputation.Record(passes=50, completed=50)
    assert reputation.reputation(trusted) > 0.95
    assert reputation.reputation(reputation.Record(passes=50, failures=1)) < reputation.reputation(
        trusted
    )
    assert reputation.check_probability(3, trust_after=10, floor=0.1) == 1.0
    assert reputation.check_probability(20, trust_after=10, floor=0.1) == 0.5
    assert reputation.check_probability(1000, trust_after=10, floor=0.1) == 0.1
    assert reputation.should_check(1000, 0.05, trust_after=10, floor=0.1)
    assert not reputation.should_check(1000, 0.5, trust_after=10, floor=0.1)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return run_module("aeamc.coordinator.cli", *args)


def test_cli_errors(tmp_path: Path) -> None:
    assert run_cli().returncode == 64
    assert run_cli("--version").stdout.startswith("aeamc-coordinator ")
    missing = run_cli("--config", str(tmp_path / "none.toml"), "run")
    assert missing.returncode == 78 and "no such file" in missing.stderr
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'state_dir = "{tmp_path / "st"}"\n[server]\nport = 1\n')
    no_key = run_cli("--config", str(cfg), "run")
    assert no_key.returncode == 78 and "init" in no_key.stderr
    unreachable = run_cli("--config", str(cfg), "status")
    assert unreachable.returncode == 69 and "cannot reach" in unreachable.stderr


def test_cli_init_is_idempotent(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    first = run_cli(
        "--config", str(cfg), "init", "--state-dir", str(tmp_path / "st"), "--port", "0"
    )
    assert first.returncode == 0, first.stderr
    assert "created identity" in first.stdout and "operator token" in first.stdout
    again = run_cli("--config", str(cfg), "init")
    assert again.returncode == 0 and "identity exists" in again.stdout
    assert "operator token" not in again.stdout
    assert (tmp_path / "st" / "tokens" / "operator.token").stat().st_mode & 0o077 == 0


async def test_signature_verifier_checks_off_the_loop_with_the_same_verdicts() -> None:
    from aeamc.coordinator.verifier import SignatureVerifier
    from aeamc.shared.errors import SignatureError
    from aeamc.shared.identity import SigningKey
    from aeamc.shared.messages import PoA, sign

    key, other = SigningKey.from_seed(os.urandom(32)), SigningKey.from_seed(os.urandom(32))
    body = {
        "type": "poa",
        "device_id": key.device_id,
        "timestamp": 1,
        "seq": 1,
        "telemetry": {
            "battery_pct": None,
            "charging": None,
            "cpu_temp_mc": None,
            "cpu_load_permille": None,
            "net_latency_us": None,
            "mem_available_kb": None,
        },
    }
    good = sign(PoA, body, key)
    verifier = SignatureVerifier()
    for started in (False, True):
        if started:
            verifier.start()
        await verifier.verify(good, key.public_key, signer_id=key.device_id)
        with pytest.raises(SignatureError):
            await verifier.verify(good, other.public_key)
        with pytest.raises(SignatureError):
            await verifier.verify(good, other.public_key, signer_id=key.device_id)
    # Many at once, good and bad mixed: each gets its own verdict.
    results = await asyncio.gather(
        *(verifier.verify(good, k.public_key) for k in [key, other] * 50), return_exceptions=True
    )
    assert [r is None for r in results] == [True, False] * 50
    verifier.stop()
