"""The runbook's alerts on a real coordinator: each is forced, seen firing in /v1/health
and `aeamc-coordinator status`, and seen clearing once the cause is fixed."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tests.anchoring.conftest import fund, miner
from tests.anchoring.test_process import CHAIN, deploy_with_cli, enrolled_device, run_task
from tests.fixtures.anvil import AnvilNode
from tests.support.coordinator import CoordinatorProcess
from tests.support.waiting import wait_for_async


def firing(coord: CoordinatorProcess) -> set[str]:
    status, body = coord.request("GET", "/v1/health")
    assert status == 200
    assert body["status"] == ("degraded" if body["alerts"] else "ok")
    return {a["name"] for a in body["alerts"]}


async def test_alerts_fire_and_clear(tmp_path: Path, anvil_bin: Path) -> None:
    node = AnvilNode(anvil_bin, workdir=tmp_path / "anvil", state_path=tmp_path / "anvil.json")
    node.start()
    coord = CoordinatorProcess(
        tmp_path / "coord",
        settings={
            "chain": {**CHAIN, "rpc_url": node.url},
            # Seconds instead of the production minutes, and a wallet line above its balance.
            "alerts": {
                "window_s": 5.0,
                "min_requests": 5,
                "latency_p99_s": 0.05,
                "no_anchor_s": 2.0,
                "wallet_low_ether": 100.0,
            },
        },
    )
    coord.init()
    device = None
    try:
        with miner(node):
            deploy_with_cli(coord, node)
            coord.start()
            device = await enrolled_device(coord)
            # AnchoringWalletLow: the wallet holds 10 ether, the line is 100.
            await wait_for_async(lambda: "AnchoringWalletLow" in firing(coord))
            shown = coord.cli("status").stdout
            assert "ALERT" in shown and "AnchoringWalletLow" in shown
            wallet = coord.request("GET", "/v1/status", token=coord.token("operator"))[1][
                "anchoring"
            ]["wallet"]
            fund(node, wallet, ether=1000)
            await wait_for_async(lambda: "AnchoringWalletLow" not in firing(coord))

            # HighLatency: requests whose bodies take far more than 50 ms to read and refuse
            # (on the proof route: the only one whose limit admits a body this large).
            # A loaded machine may take longer than the window over a batch of them, so the
            # alerts are read after each one until it fires.
            big = b'{"x":"' + b"a" * (15 * 1024 * 1024) + b'"}'
            seen = False
            for _ in range(30):
                coord.request("POST", "/v1/proofs", raw_body=big)
                if "HighLatency" in firing(coord):
                    seen = True
                    break
            assert seen
            await wait_for_async(lambda: "HighLatency" not in firing(coord), timeout=40)

        # NoNewMicroblocksAnchored: the chain node goes away while a block waits.
        node.stop(graceful=True)
        await run_task(coord)
        alert = await wait_for_async(
            lambda: next(
                (
                    a
                    for a in coord.request("GET", "/v1/health")[1]["alerts"]
                    if a["name"] == "NoNewMicroblocksAnchored"
                ),
                None,
            ),
            timeout=30,
        )
        assert alert["runbook_url"].endswith("#no-new-microblocks-anchored")
        assert re.search(r"\d+ microblocks wait", alert["summary"])
        node.start()
        with miner(node):
            await wait_for_async(
                lambda: "NoNewMicroblocksAnchored" not in firing(coord), timeout=60
            )
        final: dict[str, Any] = coord.request("GET", "/v1/status", token=coord.token("operator"))[
            1
        ]["anchoring"]
        assert final["unanchored_blocks"] == 0, json.dumps(final)
    finally:
        if device is not None:
            await device.stop()
        coord.stop()
        node.stop(graceful=False)
