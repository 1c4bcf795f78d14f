"""The anvil fixture behaves as the chain-facing tests assume: restarts, snapshots, reorgs.

Coordinator tests build their outage and reorg scenarios on these operations, so each is
checked here against observable chain state rather than trusted.
"""

from __future__ import annotations

import hashlib
import socket
from pathlib import Path

import pytest
from web3 import Web3

from tests.fixtures.anvil import (
    DEV_CHAIN_ID,
    AnvilError,
    AnvilNode,
    deploy_artifact,
    find_anvil_binary,
)

ROOT = hashlib.sha256(b"fixture").digest()


def test_node_answers_on_loopback_with_funded_accounts(anvil: AnvilNode, anvil_w3: Web3) -> None:
    assert anvil.url == f"http://127.0.0.1:{anvil.port}"
    assert anvil_w3.eth.chain_id == DEV_CHAIN_ID
    assert len(anvil.accounts) == 10
    assert [a.address for a in anvil.accounts] == anvil_w3.eth.accounts
    assert anvil_w3.eth.get_balance(anvil.accounts[0].address) == Web3.to_wei(10_000, "ether")
    # The listed key really controls the listed address.
    signer = anvil_w3.eth.account.from_key(anvil.accounts[3].private_key)
    assert signer.address == anvil.accounts[3].address


def test_restart_with_state_keeps_chain_and_port(anvil_bin: Path, tmp_path: Path) -> None:
    node = AnvilNode(anvil_bin, workdir=tmp_path, state_path=tmp_path / "state.json")
    with node:
        w3 = node.web3()
        contract = deploy_artifact(w3, "MicroblockAnchor")
        tx = contract.functions.anchor(ROOT).transact({"from": node.accounts[0].address})
        receipt = w3.eth.wait_for_transaction_receipt(tx, timeout=30)
        url, height = node.url, node.block_number()

        node.restart()
        assert node.url == url
        assert node.block_number() == height
        assert contract.functions.verifyAnchor(ROOT).call()[0] is True
        assert w3.eth.get_transaction_receipt(tx)["blockHash"] == receipt["blockHash"]

        # A crash (SIGKILL) after the graceful dump still finds the dumped chain.
        node.stop(graceful=False)
        node.start()
        assert node.block_number() == height


def test_restart_without_state_starts_a_new_chain(anvil: AnvilNode, anvil_w3: Web3) -> None:
    deploy_artifact(anvil_w3, "MicroblockAnchor")
    assert anvil.block_number() == 1
    anvil.restart()
    assert anvil.block_number() == 0
    assert anvil.running


def test_snapshot_and_revert_undo_an_anchor(anvil: AnvilNode, anvil_w3: Web3) -> None:
    contract = deploy_artifact(anvil_w3, "MicroblockAnchor")
    snapshot = anvil.snapshot()
    contract.functions.anchor(ROOT).transact({"from": anvil.accounts[0].address})
    assert contract.functions.verifyAnchor(ROOT).call()[0] is True
    assert anvil.revert(snapshot) is True
    assert contract.functions.verifyAnchor(ROOT).call() == [False, 0, 0]
    assert anvil.revert(snapshot) is False  # a snapshot is consumed by reverting to it


def test_reorg_drops_the_anchoring_transaction(anvil: AnvilNode, anvil_w3: Web3) -> None:
    contract = deploy_artifact(anvil_w3, "MicroblockAnchor")
    tx = contract.functions.anchor(ROOT).transact({"from": anvil.accounts[0].address})
    receipt = anvil_w3.eth.wait_for_transaction_receipt(tx, timeout=30)
    height = anvil.block_number()

    anvil.reorg(1)
    assert anvil.block_number() == height
    assert anvil_w3.eth.get_block(height)["hash"] != receipt["blockHash"]
    assert contract.functions.verifyAnchor(ROOT).call() == [False, 0, 0]


def test_mine_sets_timestamps(anvil: AnvilNode, anvil_w3: Web3) -> None:
    start = anvil_w3.eth.get_block("latest")["timestamp"]
    assert anvil.mine(2, timestamp=start + 1000) == 2
    assert anvil_w3.eth.get_block(1)["timestamp"] == start + 1000
    assert anvil_w3.eth.get_block(2)["timestamp"] >= start + 1000


def test_start_fails_loudly_when_fixed_port_is_taken(anvil_bin: Path, tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        node = AnvilNode(anvil_bin, workdir=tmp_path, port=busy.getsockname()[1])
        with pytest.raises(AnvilError, match="in use"):
            node.start()
    assert not node.running


def test_missing_binary_names_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANVIL_BIN", raising=False)
    with pytest.raises(AnvilError, match="npm ci"):
        find_anvil_binary(tmp_path)
