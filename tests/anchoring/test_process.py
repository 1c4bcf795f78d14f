"""Anchoring in real coordinator processes: the embedded default, a proof bundle checked
by `aeamc verify` against anvil, and kill -9 between sending and confirmation."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from aeamc.shared import bundle as bundles
from aeamc.shared import cli
from tests.anchoring.conftest import ABI, assert_exactly_once, fund, miner, sqlite_rows
from tests.fixtures.anvil import AnvilNode, deploy_artifact
from tests.support.commands import run_module
from tests.support.coordinator import CoordinatorProcess, env_without_coverage
from tests.support.device import SimDevice
from tests.support.waiting import wait_for_async

TASK = {"kind": "sha256-chain", "params": {"seed": "cd" * 32, "iterations": 50}, "chunks": 4}
CHAIN = {"anchor_interval_s": 0.3, "poll_s": 0.1, "confirmations": 2, "rpc_timeout_s": 3.0}


async def enrolled_device(coord: CoordinatorProcess) -> SimDevice:
    status, body = coord.request(
        "POST", "/v1/tokens", {"role": "enroll"}, token=coord.token("operator")
    )
    assert status == 201, body
    device = await SimDevice(coord.url).start()
    await device.join(body["token"])
    return device


async def run_task(coord: CoordinatorProcess) -> tuple[str, int]:
    """Submit a task and wait until its receipt is in a microblock: (task_id, height)."""
    client = coord.token("client")
    status, body = coord.request("POST", "/v1/tasks", TASK, token=client)
    assert status == 202, body
    task_id = body["task_id"]

    def height() -> int | None:
        t = coord.request("GET", f"/v1/tasks/{task_id}", token=client)[1]
        heights = [p["block_height"] for p in t.get("proofs", [])]
        return heights[0] + 1 if heights and heights[0] is not None else None

    return task_id, await wait_for_async(height) - 1


def anchoring(coord: CoordinatorProcess) -> dict[str, Any]:
    return coord.request("GET", "/v1/status", token=coord.token("operator"))[1]["anchoring"]


def aeamc(*args: str) -> subprocess.CompletedProcess[str]:
    return run_module("aeamc.shared.cli", *args, env=env_without_coverage())


def _subprocess_verify(path: Path, rpc: str) -> tuple[int, str, str]:
    out = aeamc("verify", str(path), "--rpc", rpc)
    return out.returncode, out.stdout, out.stderr


def _inprocess_verify(path: Path, rpc: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(["verify", str(path), "--rpc", rpc])
    return code, out.getvalue(), err.getvalue()


def deploy_with_cli(coord: CoordinatorProcess, node: AnvilNode) -> str:
    """`chain deploy` refuses an empty wallet and names it; funded, it deploys and records."""
    refused = coord.cli("chain", "deploy", check=False)
    assert refused.returncode == 1 and "no funds" in refused.stderr, refused.stderr
    wallet = re.search(r"0x[0-9a-fA-F]{40}", refused.stderr)
    assert wallet is not None
    fund(node, wallet.group(0))
    done = coord.cli("chain", "deploy")
    address = re.search(r"deployed MicroblockAnchor at (0x[0-9a-fA-F]{40})", done.stdout)
    assert address is not None, done.stdout
    assert f'contract = "{address.group(1)}"' in coord.config_path.read_text()
    assert "each anchor uses about 50,576 gas" in done.stdout
    again = coord.cli("chain", "deploy", check=False)
    assert again.returncode == 1 and "already" in again.stderr
    return address.group(1)


def events(node: AnvilNode, contract: str) -> list[bytes]:
    c = node.web3().eth.contract(address=contract, abi=ABI)
    return [bytes(e["args"]["root"]) for e in c.events.Anchored.get_logs(from_block=0)]


async def test_embedded_default_anchors_with_no_chain_configuration(tmp_path: Path) -> None:
    coord = CoordinatorProcess(tmp_path / "coord")  # no [chain] section at all
    coord.init()
    coord.start()
    device = await enrolled_device(coord)
    try:
        task_id, height = await run_task(coord)
        a = await wait_for_async(
            lambda: (
                (s := anchoring(coord))["blocks_anchored"] >= 1
                and s["unanchored_blocks"] == 0
                and s
            ),
            timeout=40,
        )
        # The explorer's view of the block names its anchor transaction and depth.
        anchor = coord.request("GET", f"/v1/microblocks/{height}")[1]["anchor"]
        assert anchor["state"] == "final" and anchor["tx_hash"].startswith("0x")
        assert anchor["confirmations"] >= 1 and anchor["tree_size"] >= 1
        assert a["embedded"] is True and a["state"] == "running"
        assert "lost when the coordinator stops" in a["note"]
        assert a["last_final_anchor"]["gas_used"] > 40_000 and a["balance_wei"] > 0
        status, bundle = coord.request("GET", f"/v1/receipts/{task_id}/{device.device_id}/proof")
        assert status == 200, bundle
        steps = bundles.verify_bundle(bundle, None)
        assert [s.name for s in steps] == list(bundles.STEPS[:-1]) and all(s.ok for s in steps)
        shown = coord.cli("chain", "status").stdout
        assert "embedded, in-process (lost on restart)" in shown and "wallet" in shown
        assert "anchoring" in coord.cli("status").stdout
    finally:
        await device.stop()
        coord.stop()


async def test_proof_bundle_from_a_real_run_verifies_on_chain(
    anvil: AnvilNode, tmp_path: Path
) -> None:
    coord = CoordinatorProcess(
        tmp_path / "coord", settings={"chain": {"rpc_url": anvil.url, **CHAIN}}
    )
    coord.init()
    contract = deploy_with_cli(coord, anvil)
    anvil.set_automine(False)  # the first anchor waits in the mempool until we mine
    coord.start()
    device = await enrolled_device(coord)
    try:
        receipts = [await run_task(coord)]
        first = f"/v1/receipts/{receipts[0][0]}/{device.device_id}/proof"
        status, body = coord.request("GET", first)
        assert status == 409 and body["error"]["code"] == "not_anchored", body
        receipts += [await run_task(coord), await run_task(coord)]
        assert coord.request("GET", f"/v1/receipts/nope/{device.device_id}/proof")[0] == 404
        assert coord.request("GET", f"/v1/receipts/{receipts[0][0]}/NOPE/proof")[0] == 400
        with miner(anvil, 0.15):
            found = [
                await wait_for_async(
                    lambda t=t: (
                        (r := coord.request("GET", f"/v1/receipts/{t}/{device.device_id}/proof"))[0]
                        == 200
                        and r[1]
                    )
                )
                for t, _ in receipts
            ]
        chosen = max(found, key=lambda b: len(b["anchor"]["path"]))
        assert chosen["anchor"]["tree_size"] >= 2 and chosen["anchor"]["contract"] == contract
        assert chosen["anchor"]["chain_id"] == 31337
        task_id = chosen["pot"]["task_id"]
        from_cli = coord.cli("receipts", "proof", task_id, device.device_id).stdout
        assert json.loads(from_cli) == chosen

        path = tmp_path / "bundle.json"
        path.write_text(json.dumps(chosen))
        ok = aeamc("verify", str(path), "--rpc", anvil.url)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        lines = ok.stdout.splitlines()
        assert [line.split(":")[0] for line in lines[:-1]] == [f"ok {s}" for s in bundles.STEPS]
        assert lines[-1] == "receipt verified"

        def flip(hex_text: str, pos: int) -> str:
            return hex_text[:pos] + ("1" if hex_text[pos] == "0" else "0") + hex_text[pos + 1 :]

        header_ts = 2 * 9  # a byte of the header's timestamp: the block hash changes
        payload_hash = 2 * 21
        cases = {
            "PoT signature": lambda b: b["pot"].update(
                output_digest=flip(b["pot"]["output_digest"], 0)
            ),
            "path to anchor root": lambda b: b.update(microblock=flip(b["microblock"], header_ts)),
            "payload hash": lambda b: b.update(microblock=flip(b["microblock"], payload_hash)),
            "path to anchor root ": lambda b: b["anchor"].update(
                path=[flip(b["anchor"]["path"][0], 0), *b["anchor"]["path"][1:]]
            ),
            "path to anchor root  ": lambda b: b["anchor"].update(
                root=flip(b["anchor"]["root"], 0)
            ),
            "anchored on chain": lambda b: b["anchor"].update(chain_id=1),
        }
        for i, (step, edit) in enumerate(cases.items()):
            broken = copy.deepcopy(chosen)
            edit(broken)
            path.write_text(json.dumps(broken))
            # The command itself in a subprocess once; the same main() in-process otherwise.
            code, stdout, stderr = (
                _subprocess_verify(path, anvil.url)
                if i == 0
                else _inprocess_verify(path, anvil.url)
            )
            assert code == 1, (step, stdout)
            assert stdout.splitlines()[-1].startswith(f"FAIL {step.strip()}:"), stdout
            assert f"failed at step '{step.strip()}'" in stderr
        # An auditor who knows the real contract asks it, not the one the bundle names.
        anvil.set_automine(True)
        other = deploy_artifact(anvil.web3(), "MicroblockAnchor", sender=anvil.accounts[3].address)
        path.write_text(json.dumps(chosen))
        code, stdout, _ = _inprocess_verify(path, anvil.url)
        assert code == 0, stdout
        out = aeamc("verify", str(path), "--rpc", anvil.url, "--contract", other.address)
        assert out.returncode == 1 and "FAIL anchored on chain: root" in out.stdout, out.stdout
        assert "note: asking contract" in out.stdout

        shown = coord.cli("chain", "status").stdout
        assert contract in shown and "chain id" in shown and "31337" in shown
        status_json = json.loads(coord.cli("chain", "status", "--json").stdout)
        assert status_json["embedded"] is False and status_json["unanchored_blocks"] == 0
    finally:
        await device.stop()
        coord.stop()


async def test_kill_9_between_send_and_confirmation(anvil: AnvilNode, tmp_path: Path) -> None:
    coord = CoordinatorProcess(
        tmp_path / "coord", settings={"chain": {"rpc_url": anvil.url, **CHAIN}}
    )
    coord.init()
    contract = deploy_with_cli(coord, anvil)
    db = sqlite_rows(coord.state_dir / "coordinator.db")
    anvil.set_automine(False)
    coord.start()
    device = await enrolled_device(coord)
    try:
        await run_task(coord)
        sent = await wait_for_async(lambda: db("SELECT * FROM anchors WHERE state='sent'"))
        coord.kill()  # the transaction is in the mempool, not yet in a block
        anvil.mine(1)  # ...and gets mined while the coordinator is down
        coord.start()
        device.coordinator_url = coord.url
        with miner(anvil, 0.15):
            await run_task(coord)  # anchoring goes on after the restart
            await wait_for_async(
                lambda: (
                    db(
                        "SELECT count(*) AS n FROM blocks b LEFT JOIN anchors a "
                        "ON a.id = b.anchor_id WHERE a.state IS NOT 'final'"
                    )[0]["n"]
                    == 0
                )
            )
    finally:
        await device.stop()
        coord.stop()
    first = sent[0]
    assert db(f"SELECT state FROM anchors WHERE id={first['id']}")[0]["state"] == "final"
    assert [
        t["tx_hash"] for t in db(f"SELECT tx_hash FROM anchor_txs WHERE anchor_id={first['id']}")
    ] == [first["tx_hash"]]
    assert_exactly_once(db, events(anvil, contract))
    gas = [r["gas_used"] for r in db("SELECT gas_used FROM anchors WHERE state='final'")]
    assert gas and all(45_000 < g < 56_000 for g in gas)
