"""The anchoring service against a real anvil node: confirmations, outages, reorgs,
stuck transactions, crashes between storing and sending, and roots already on chain."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from aeamc.coordinator.anchoring import store
from aeamc.coordinator.anchoring.chain import Chain
from aeamc.shared import merkle
from aeamc.shared.anchoring import Include, Replace, Requeue, State, YieldTo
from tests.anchoring.conftest import Env, add_blocks, all_final, assert_exactly_once, drive
from tests.fixtures.anvil import deploy_artifact


def roots_ok(anchor_env: Env) -> None:
    assert_exactly_once(anchor_env.rows, anchor_env.anchored_roots())


def anchors(anchor_env: Env) -> list[dict]:
    return anchor_env.rows("SELECT * FROM anchors ORDER BY id")


async def test_blocks_are_anchored_and_confirmed(anchor_env: Env) -> None:
    svc = await anchor_env.service()
    await add_blocks(anchor_env.db, 3)
    await drive(svc, lambda: all_final(anchor_env), node=anchor_env.node)
    await add_blocks(anchor_env.db, 2)
    await drive(svc, lambda: all_final(anchor_env), node=anchor_env.node)
    rows = anchors(anchor_env)
    assert [(a["state"], a["tree_size"]) for a in rows] == [("final", 3), ("final", 2)]
    # One transaction per root, whatever the number of blocks: ~50.6k gas each.
    for a in rows:
        assert 45_000 < a["gas_used"] < 56_000, a["gas_used"]
        assert a["effective_gas_price"] > 0
    assert rows[0]["nonce"] + 1 == rows[1]["nonce"]
    # The contract agrees on where each root is.
    anchored, _, block = anchor_env.w3_contract().functions.verifyAnchor(rows[0]["root"]).call()
    assert anchored and block == rows[0]["block_number"]
    roots_ok(anchor_env)
    status = await svc.status()
    assert status["unanchored_blocks"] == 0 and status["blocks_anchored"] == 5
    assert status["embedded"] is False and status["chain_id"] == 31337
    assert status["balance_wei"] > 0 and status["wallet"] == anchor_env.wallet.address
    # The balance reads feed the wallet's burn (one sample a minute, so maybe none yet).
    assert svc.status_info.balance_samples[-1][1] <= svc.status_info.balance_samples[0][1]
    burn = status["wallet_burn_wei_per_s"]
    assert burn is None or burn >= 0
    assert status["last_final_anchor"]["gas_used"] == rows[1]["gas_used"]
    assert status["last_final_anchor_age_s"] is not None and status["rpc_errors"] == 0
    per_block = anchor_env.rows("SELECT * FROM block_anchors ORDER BY height")
    assert [(b["anchor_id"], b["leaf_index"], b["state"]) for b in per_block] == [
        (1, 0, "final"),
        (1, 1, "final"),
        (1, 2, "final"),
        (2, 0, "final"),
        (2, 1, "final"),
    ]


async def test_node_outage_loses_nothing_and_sends_no_root_twice(stateful_env: Env) -> None:
    anchor_env = stateful_env
    node = anchor_env.node
    svc = await anchor_env.service()
    await add_blocks(anchor_env.db, 2)
    await drive(svc, lambda: all_final(anchor_env), node=node)
    # Hold the next transaction in the mempool, then take the node away under it.
    node.set_automine(False)
    await add_blocks(anchor_env.db, 2)
    await drive(svc, lambda: any(a["state"] == "sent" for a in anchors(anchor_env)))
    in_flight = next(a for a in anchors(anchor_env) if a["state"] == "sent")
    node.stop()
    await svc.start()  # the real loop from here: it must ride out the outage on its own
    for _ in range(3):
        await add_blocks(anchor_env.db, 1)
        await asyncio.sleep(0.3)
    node.start()  # same port, same chain, empty mempool; automine is back on
    deadline = time.monotonic() + 20
    while not all_final(anchor_env):
        assert time.monotonic() < deadline, await svc.status()
        node.mine(1)
        await asyncio.sleep(0.1)
    status = await svc.status()
    assert status["rpc_errors"] > 0 and status["state"] == "running"
    roots_ok(anchor_env)
    # The lost transaction went out again as the very same signed bytes.
    txs = anchor_env.rows("SELECT tx_hash FROM anchor_txs WHERE anchor_id=?", [in_flight["id"]])
    assert [t["tx_hash"] for t in txs] == [in_flight["tx_hash"]]
    assert (
        anchor_env.rows("SELECT state FROM anchors WHERE id=?", [in_flight["id"]])[0]["state"]
        == "final"
    )


async def test_reorg_puts_the_blocks_back(anchor_env: Env) -> None:
    svc = await anchor_env.service(confirmations=3)
    await add_blocks(anchor_env.db, 3)
    await drive(svc, lambda: anchors(anchor_env) and anchors(anchor_env)[0]["state"] == "included")
    first = anchors(anchor_env)[0]
    anchor_env.node.reorg(1)  # the block holding the anchor is replaced by an empty one
    action = await svc.tick()
    assert isinstance(action, Requeue) and action.state is State.REORGED
    assert anchor_env.rows("SELECT count(*) AS n FROM blocks WHERE anchor_id IS NULL")[0]["n"] == 3
    await add_blocks(anchor_env.db, 1)  # formed meanwhile: the new root covers it too
    await drive(svc, lambda: all_final(anchor_env), node=anchor_env.node)
    rows = anchors(anchor_env)
    assert [a["state"] for a in rows] == ["reorged", "final"]
    assert rows[1]["nonce"] == first["nonce"]  # the same nonce: the two roots exclude each other
    assert rows[1]["tree_size"] == 4 and rows[1]["root"] != first["root"]
    # The replacement outbids the reorged transaction in case a mempool still holds it.
    assert rows[1]["max_priority_fee_per_gas"] * 8 >= first["max_priority_fee_per_gas"] * 9
    roots_ok(anchor_env)
    assert bytes(first["root"]) not in anchor_env.anchored_roots()


async def included_then_reorged(anchor_env: Env, svc: Any) -> tuple[dict[str, Any], bytes]:
    """Two blocks anchored and included, then the block holding the anchor reorged away:
    the service re-queues it. The anchor row and its signed transaction, to mine again."""
    await add_blocks(anchor_env.db, 2)
    await drive(svc, lambda: anchors(anchor_env) and anchors(anchor_env)[0]["state"] == "included")
    old = anchors(anchor_env)[0]
    raw = anchor_env.rows("SELECT raw FROM anchor_txs WHERE anchor_id=?", [old["id"]])[0]["raw"]
    anchor_env.node.reorg(1)
    assert isinstance(await svc.tick(), Requeue)
    return old, raw


async def test_a_reorged_transaction_mined_again_is_revived_not_doubled(anchor_env: Env) -> None:
    svc = await anchor_env.service(confirmations=3)
    old, raw = await included_then_reorged(anchor_env, svc)
    await add_blocks(anchor_env.db, 1)
    # The next anchor is stored but its broadcast fails; meanwhile the network puts the
    # old transaction back into a block.
    chain = svc.chain
    assert chain is not None
    real_send = chain.send_raw
    chain.send_raw = lambda raw_tx: (False, "simulated refusal")  # type: ignore[method-assign]
    await svc.tick()
    new = anchors(anchor_env)[1]
    assert new["state"] == "pending" and new["nonce"] == old["nonce"]
    anchor_env.node.rpc("eth_sendRawTransaction", "0x" + bytes(raw).hex())
    chain.send_raw = real_send  # type: ignore[method-assign]
    action = await svc.tick()
    assert isinstance(action, YieldTo)
    rows = anchors(anchor_env)
    assert [rows[0]["state"], rows[1]["state"]] == ["included", "dropped"]
    await drive(svc, lambda: all_final(anchor_env), node=anchor_env.node)
    roots_ok(anchor_env)  # the old root covers its two blocks, a third root the new one


async def test_a_reorged_transaction_mined_before_the_next_anchor_is_revived(
    anchor_env: Env,
) -> None:
    svc = await anchor_env.service(confirmations=2)
    _, raw = await included_then_reorged(anchor_env, svc)
    anchor_env.node.rpc("eth_sendRawTransaction", "0x" + bytes(raw).hex())  # mined again at once
    await add_blocks(anchor_env.db, 1)
    await svc.tick()  # its nonce is used, but not final yet: nothing new may start
    assert len(anchors(anchor_env)) == 1
    anchor_env.node.mine(2)
    await svc.tick()  # final now: our own receipt is found and the anchor revived
    assert anchors(anchor_env)[0]["state"] == "included"
    await drive(svc, lambda: all_final(anchor_env), node=anchor_env.node)
    roots_ok(anchor_env)


async def test_a_stuck_transaction_is_replaced_with_higher_fees(anchor_env: Env) -> None:
    svc = await anchor_env.service(stuck_after_s=0.3)
    anchor_env.node.set_automine(False)
    await add_blocks(anchor_env.db, 2)
    await drive(svc, lambda: anchors(anchor_env) and anchors(anchor_env)[0]["state"] == "sent")
    await asyncio.sleep(0.35)
    action = await svc.tick()
    assert isinstance(action, Replace)
    txs = anchor_env.rows("SELECT * FROM anchor_txs ORDER BY created_at, rowid")
    assert len(txs) == 2 and txs[0]["nonce"] == txs[1]["nonce"]
    for name in ("max_fee_per_gas", "max_priority_fee_per_gas"):
        assert txs[1][name] * 8 >= txs[0][name] * 9
    anchor_env.node.mine(1)
    action = await svc.tick()
    assert isinstance(action, Include) and action.receipt.tx_hash == txs[1]["tx_hash"]
    anchor_env.node.set_automine(True)
    await drive(svc, lambda: all_final(anchor_env), node=anchor_env.node)
    roots_ok(anchor_env)
    assert svc.status_info.counters["replacements"] == 1


async def test_crash_after_storing_the_intent_resends_the_same_transaction(anchor_env: Env) -> None:
    svc = await anchor_env.service()
    await add_blocks(anchor_env.db, 3)
    chain = svc.chain
    assert chain is not None

    def lost(raw: bytes) -> tuple[bool, str]:
        raise ConnectionError("the process died here")

    chain.send_raw = lost  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await svc.tick()
    stored = anchors(anchor_env)[0]
    assert stored["state"] == "pending"
    await svc.stop()
    restarted = await anchor_env.service()  # a new process on the same database
    await drive(restarted, lambda: all_final(anchor_env), node=anchor_env.node)
    txs = anchor_env.rows("SELECT tx_hash FROM anchor_txs")
    assert [t["tx_hash"] for t in txs] == [stored["tx_hash"]]
    assert anchors(anchor_env)[0]["tx_hash"] == stored["tx_hash"]
    roots_ok(anchor_env)


async def test_a_root_already_on_chain_is_adopted_not_sent_again(anchor_env: Env) -> None:
    await add_blocks(anchor_env.db, 2)
    hashes = [bytes(r["hash"]) for r in anchor_env.rows("SELECT hash FROM blocks ORDER BY height")]
    root = merkle.root(hashes)
    # Someone (e.g. this coordinator before a restore from backup) anchored the root already.
    contract = anchor_env.w3_contract()
    _sign_and_send(anchor_env, contract.functions.addSubmitter(anchor_env.node.accounts[1].address))
    tx = contract.functions.anchor(root).transact({"from": anchor_env.node.accounts[1].address})
    anchor_env.node.web3().eth.wait_for_transaction_receipt(tx)
    nonce_before = anchor_env.node.web3().eth.get_transaction_count(anchor_env.wallet.address)
    svc = await anchor_env.service()
    await drive(svc, lambda: all_final(anchor_env), node=anchor_env.node)
    a = anchors(anchor_env)[0]
    assert a["tx_hash"] == "0x" + bytes(tx).hex() and a["nonce"] is None
    assert (
        anchor_env.node.web3().eth.get_transaction_count(anchor_env.wallet.address) == nonce_before
    )
    roots_ok(anchor_env)


async def test_a_paused_contract_refuses_before_anything_is_stored(anchor_env: Env) -> None:
    contract = anchor_env.w3_contract()
    _sign_and_send(anchor_env, contract.functions.pause())
    svc = await anchor_env.service()
    await add_blocks(anchor_env.db, 1)
    await svc.tick()
    assert anchors(anchor_env) == []
    assert "Paused" in (svc.status_info.last_error or "")
    assert (await svc.status())["state"] == "refused"
    _sign_and_send(anchor_env, contract.functions.unpause())
    svc.sender.last_created_ms = None  # the next interval, without waiting for it
    await drive(svc, lambda: all_final(anchor_env), node=anchor_env.node)
    roots_ok(anchor_env)


async def test_another_contract_or_a_lost_chain_means_anchoring_again(anchor_env: Env) -> None:
    svc = await anchor_env.service()
    await add_blocks(anchor_env.db, 2)
    await drive(svc, lambda: all_final(anchor_env), node=anchor_env.node)
    await svc.stop()
    # The operator points the coordinator at a new contract: its blocks are anchored there.
    other = Chain.connect(anchor_env.node.url, 10).deploy(anchor_env.wallet, cap_wei=200 * 10**9)
    anchor_env.contract = other
    svc2 = await anchor_env.service()
    assert anchor_env.rows("SELECT count(*) AS n FROM blocks WHERE anchor_id IS NULL")[0]["n"] == 2
    await drive(svc2, lambda: all_final(anchor_env), node=anchor_env.node)
    target = svc2.target
    assert target is not None
    finals = anchor_env.rows(
        "SELECT contract FROM anchors WHERE state='final' AND id IN (SELECT anchor_id FROM blocks)"
    )
    assert {f["contract"] for f in finals} == {other}
    summary = anchor_env.db.read_sync(lambda d: store.summary(d, None))
    assert summary["unanchored_blocks"] == 0


def _sign_and_send(anchor_env: Env, fn: object) -> str:
    """Send a contract call from the coordinator's wallet (owner of the contract)."""
    w3 = anchor_env.node.web3()
    tx = fn.build_transaction(  # type: ignore[attr-defined]
        {
            "from": anchor_env.wallet.address,
            "nonce": w3.eth.get_transaction_count(anchor_env.wallet.address, "pending"),
            "chainId": 31337,
        }
    )
    signed = anchor_env.wallet.sign_transaction(tx)
    w3.eth.send_raw_transaction(signed.raw)
    w3.eth.wait_for_transaction_receipt(signed.tx_hash)
    return signed.tx_hash


async def test_a_wallet_that_may_not_anchor_is_reported(anchor_env: Env) -> None:
    # A contract the wallet may not anchor to: the refusal names the reason.
    foreign = deploy_artifact(
        anchor_env.node.web3(), "MicroblockAnchor", sender=anchor_env.node.accounts[2].address
    )
    anchor_env.contract = foreign.address
    svc = await anchor_env.service()
    assert svc.status_info.submitter is False
    await add_blocks(anchor_env.db, 1)
    await svc.tick()
    assert "NotSubmitter" in (svc.status_info.last_error or "")
    assert anchors(anchor_env) == [] and (await svc.status())["wallet_submitter"] is False
