"""Anchoring building blocks without a chain: wallet key files, the [chain] section, the
shipped contract artifact, proof-bundle refusals and the auditor's command line."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from eth_utils import keccak

from aeamc.coordinator.anchoring import bundles, chain
from aeamc.coordinator.anchoring.wallet import (
    WalletError,
    create_wallet_file,
    ensure_wallet_file,
    load_wallet_file,
)
from aeamc.coordinator.config import (
    ConfigError,
    CoordinatorConfig,
    parse_config,
    render_config,
    write_setting,
)
from aeamc.coordinator.db import Database
from aeamc.coordinator.errors import http_status
from aeamc.shared import cli
from aeamc.shared.refusals import Refusal
from tests.anchoring.conftest import add_blocks
from tests.support.coordinator import env_without_coverage
from tests.support.imports import modules_after
from tests.support.keyfiles import assert_guarded

REPO = Path(__file__).resolve().parents[2]


def test_wallet_key_file_life_cycle(tmp_path: Path) -> None:
    path = tmp_path / "w.key"
    wallet = create_wallet_file(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert load_wallet_file(path).address == wallet.address
    again, created = ensure_wallet_file(path)
    assert again.address == wallet.address and not created
    assert_guarded(path, create_wallet_file, load_wallet_file, WalletError, open_mode=0o640)
    for text, message in [("zz", "not a hex"), ("00" * 32, "not a secp256k1"), ("01", "32 bytes")]:
        path.write_text(text + "\n")
        with pytest.raises(WalletError, match=message):
            load_wallet_file(path)
    path.write_text("0x" + "11" * 32 + "\n")  # a 0x prefix is accepted
    assert load_wallet_file(path).address == Account.from_key(b"\x11" * 32).address
    with pytest.raises(WalletError, match="no wallet key"):
        load_wallet_file(tmp_path / "absent.key")


def test_init_creates_the_wallet_key_once(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    base = [sys.executable, "-m", "aeamc.coordinator.cli", "--config", str(config), "init"]
    first = subprocess.run(
        [*base, "--state-dir", str(tmp_path / "s")],
        capture_output=True,
        text=True,
        check=True,
        env=env_without_coverage(),
    )
    key = tmp_path / "s" / "anchor-wallet.key"
    assert f"created the anchoring wallet key {key}" in first.stdout
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    before = key.read_text()
    again = subprocess.run(
        base, check=False, capture_output=True, text=True, env=env_without_coverage()
    )
    assert again.returncode == 0 and key.read_text() == before
    os.chmod(key, 0o644)
    loose = subprocess.run(
        base, check=False, capture_output=True, text=True, env=env_without_coverage()
    )
    assert loose.returncode == 78 and "too open" in loose.stderr


def test_wallet_signs_what_the_service_stores(tmp_path: Path) -> None:
    wallet = create_wallet_file(tmp_path / "w.key")
    tx = {
        "type": 2,
        "chainId": 31337,
        "nonce": 4,
        "to": "0x" + "22" * 20,
        "value": 0,
        "gas": 60_000,
        "maxFeePerGas": 2 * 10**9,
        "maxPriorityFeePerGas": 10**9,
        "data": "0x",
    }
    signed = wallet.sign_transaction(tx)
    # The hash is known before any node sees the bytes: that is what crash recovery keys on.
    assert signed.tx_hash == "0x" + keccak(signed.raw).hex()
    assert Account.recover_transaction(signed.raw) == wallet.address


def test_chain_section_defaults_render_and_parse_back(tmp_path: Path) -> None:
    config = CoordinatorConfig(state_dir=tmp_path)
    text = render_config(config)
    assert "[chain]" in text and 'rpc_url = ""' in text
    assert parse_config(tomllib.loads(text)) == config
    assert config.chain.rpc_url == "" and config.chain.enabled
    assert config.wallet_path == tmp_path / "anchor-wallet.key"
    other = parse_config({"state_dir": str(tmp_path), "chain": {"wallet_key_file": "/k/w.key"}})
    assert other.wallet_path == Path("/k/w.key")


@pytest.mark.parametrize(
    ("chain", "message"),
    [
        ({"rpc_url": "ftp://x"}, "chain.rpc_url"),
        # A LAN host that could answer for the chain: https:// only, unless allowed.
        ({"rpc_url": "http://10.0.0.2:8545"}, "chain.rpc_url must be https:// unless"),
        ({"rpc_url": "http://127.0.0.1.example.net:8545"}, "chain.rpc_url must be https://"),
        ({"contract": "0x12"}, "chain.contract"),
        ({"confirmations": -1}, "chain.confirmations"),
        ({"anchor_interval_s": 0}, "chain.anchor_interval_s"),
        ({"max_fee_gwei": 0}, "chain.max_fee_gwei"),
        ({"priority_fee_gwei": 500.0}, "chain.priority_fee_gwei"),
        ({"chain_id": -5}, "chain.chain_id"),
        ({"rpc": "x"}, "chain.rpc: unknown setting"),
        ({"confirmations": "3"}, "chain.confirmations: expected int"),
    ],
)
def test_bad_chain_settings_are_named(chain: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"chain": chain})


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://node.example.net:8545", False),
        ("http://127.0.0.1:8545", False),
        ("http://127.9.9.9:8545", False),
        ("http://localhost:8545", False),
        ("http://[::1]:8545", False),
        ("http://10.0.0.2:8545", True),
    ],
)
def test_rpc_urls_the_coordinator_takes(url: str, allowed: bool) -> None:
    chain_settings: dict[str, Any] = {"rpc_url": url}
    if allowed:
        chain_settings["allow_plain_http_rpc"] = True
    assert parse_config({"chain": chain_settings}).chain.rpc_url == url


def test_write_setting_keeps_the_operators_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        f'# mine\nstate_dir = "{tmp_path}"\n\n[chain]\n# my node\n'
        'rpc_url = "https://n:8545"\n\n[eps]\nmin_eps = 0.4\n'
    )
    contract = "0x" + "ab" * 20
    config = write_setting(path, "chain", "contract", contract)
    assert config.chain.contract == contract and config.eps.min_eps == 0.4
    text = path.read_text()
    assert "# mine" in text and "# my node" in text
    assert text.index(f'contract = "{contract}"') < text.index("[eps]")
    write_setting(path, "chain", "contract", "0x" + "cd" * 20)  # replaced, not added twice
    assert path.read_text().count("contract =") == 1
    bare = tmp_path / "bare.toml"
    bare.write_text(f'state_dir = "{tmp_path}"\n')
    assert write_setting(bare, "chain", "contract", contract).chain.contract == contract
    before = bare.read_text()
    with pytest.raises(ConfigError):
        write_setting(bare, "chain", "contract", "not an address")
    assert bare.read_text() == before  # a refused value leaves the file as it was


def test_shipped_artifact_is_the_committed_one() -> None:
    shipped = Path(chain.__file__).with_name(chain.ARTIFACT).read_bytes()
    assert shipped == (REPO / "contracts" / "artifacts" / "MicroblockAnchor.json").read_bytes()
    assert chain.load_artifact()["contractName"] == "MicroblockAnchor"


def test_rpc_urls_are_shown_without_credentials() -> None:
    assert (
        chain.redact_url("https://mainnet.example.io/v3/SECRETKEY") == "https://mainnet.example.io"
    )
    assert chain.redact_url("http://user:pw@10.0.0.2:8545/") == "http://10.0.0.2:8545"


def test_revert_names_from_either_backend() -> None:
    c = chain.Chain.__new__(chain.Chain)
    c._error_selectors = {bytes.fromhex("30d23813"): "AlreadyAnchored"}

    class Custom(Exception):
        data = "0x30d23813" + "01" * 32

    assert c._revert_name(Custom()) == "AlreadyAnchored"
    tester = Exception("execution reverted: b'0\\xd28\\x13\\x05\\x05'")
    assert c._revert_name(tester) == "AlreadyAnchored"
    assert c._revert_name(Exception("connection refused")) is None


async def test_bundle_refusals_name_the_reason(tmp_path: Path) -> None:
    db = Database(tmp_path / "c.db")
    db.open()
    try:
        with pytest.raises(Refusal) as e:
            await bundles.receipt_bundle(db, "t-0", "ab" * 16)
        assert http_status(e.value) == 404
        await add_blocks(db, 1)  # block 0 holds seq 1

        def proof(d: Any, seq: int) -> None:
            d.execute(
                "INSERT INTO proofs (seq, task_id, device_id, pot, signature, output, "
                "output_digest, accepted_at) VALUES (?, 't-0', ?, '{}', x'00', x'00', '', 0)",
                [seq, "ab" * 16],
            )

        await db.write(lambda d: proof(d, 2))  # past block 0's range: waits for a block
        with pytest.raises(Refusal, match="not in a microblock") as e:
            await bundles.receipt_bundle(db, "t-0", "ab" * 16)
        assert (http_status(e.value), e.value.code) == (409, "not_anchored")
        await db.write(lambda d: d.execute("UPDATE proofs SET seq=1"))
        with pytest.raises(Refusal, match="waits for its anchor"):
            await bundles.receipt_bundle(db, "t-0", "ab" * 16)
        await db.write(
            lambda d: (
                d.execute(
                    "INSERT INTO anchors (id, root, tree_size, chain_id, contract, sender, nonce, "
                    "state, tx_hash, created_at) VALUES (1, x'00', 1, 1, '0x', '0x', 0, "
                    "'included', '0x', 0)"
                ),
                d.execute("UPDATE blocks SET anchor_id=1, leaf_index=0"),
            )
        )
        with pytest.raises(Refusal, match="which is included"):
            await bundles.receipt_bundle(db, "t-0", "ab" * 16)
    finally:
        db.close()


def _verify(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(["verify", *args])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_verify_command_edges(tmp_path: Path) -> None:
    assert _verify(str(tmp_path / "absent.json"), "--rpc", "http://127.0.0.1:9")[0] == 66
    assert _verify(str(tmp_path / "absent.json"))[0] == 64  # --rpc is required
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    code, out, err = _verify(str(bad), "--rpc", "http://127.0.0.1:9")
    assert code == 1 and out.startswith("FAIL bundle: not JSON") and "'bundle'" in err
    bad.write_text(json.dumps({"pot": {}}))
    code, out, _ = _verify(str(bad), "--rpc", "http://127.0.0.1:9")
    assert code == 1 and out.startswith("FAIL bundle:")


def test_verify_refuses_plain_http_to_another_host(tmp_path: Path) -> None:
    """An auditor's check is only as good as the chain's answers: a plain http:// node on
    another host is refused before anything is asked, unless the auditor allows it."""
    bundle = tmp_path / "bundle.json"
    bundle.write_text(json.dumps({"pot": {}}))
    code, out, err = _verify(str(bundle), "--rpc", "http://192.0.2.7:8545")
    assert code == 64 and out == ""
    assert "--rpc must be https:// unless" in err and "--allow-plain-http" in err
    code, out, _ = _verify(str(bundle), "--rpc", "http://192.0.2.7:8545", "--allow-plain-http")
    assert code == 1 and out.startswith("FAIL bundle:")  # went on to check the bundle


def test_the_pure_core_still_imports_no_web3() -> None:
    loaded = modules_after("import aeamc.shared.anchoring, aeamc.shared.chain, aeamc.shared.cli")
    assert not loaded & {"web3", "eth_account", "asyncio", "sqlite3", "aiohttp"}
