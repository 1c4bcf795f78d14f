"""kill -9 of the coordinator while 1,000 proofs are being submitted: every proof that got
a 202 is in a block after the restart, the chain verifies from genesis, and no receipt
appears twice."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from aeamc.shared import microblock
from aeamc.shared.messages import Assignment
from tests.support.coordinator import CoordinatorProcess, microblock_chain
from tests.support.device import SimDevice

PROOFS = 1000
DEVICES = 5
KILL_AFTER = 300


async def _get(session: aiohttp.ClientSession, url: str, **kw: Any) -> Any:
    async with session.get(url, **kw) as resp:
        return await (resp.json() if resp.content_type == "application/json" else resp.read())


async def test_kill_9_under_load_loses_no_acknowledged_proof(tmp_path: Path) -> None:
    coord = CoordinatorProcess(
        tmp_path / "coord",
        settings={
            "scheduler": {"max_inflight_per_device": PROOFS},
            "blocks": {"max_receipts": 100, "interval_s": 0.3},
        },
    )
    coord.init()
    coord.start()
    devices = [await SimDevice(coord.url, auto_prove=False).start() for _ in range(DEVICES)]
    session = coord.session()
    try:
        operator = {"Authorization": f"Bearer {coord.token('operator')}"}
        client = {"Authorization": f"Bearer {coord.token('client')}"}
        async with session.post(
            f"{coord.url}/v1/tokens", json={"role": "enroll"}, headers=operator
        ) as resp:
            token = (await resp.json())["token"]
        for d in devices:
            await d.join(token)
        task = {"kind": "sha256-chain", "params": {"seed": "cd" * 32, "iterations": 1}, "chunks": 1}
        for _ in range(PROOFS):
            async with session.post(f"{coord.url}/v1/tasks", json=task, headers=client) as resp:
                assert resp.status == 202
        for _ in range(300):
            if sum(len(d.assignments) for d in devices) == PROOFS:
                break
            await asyncio.sleep(0.1)
        work: list[tuple[SimDevice, Assignment]] = [(d, a) for d in devices for a in d.assignments]
        assert len(work) == PROOFS

        acked: set[tuple[str, str]] = set()
        killed = asyncio.Event()
        gate = asyncio.Semaphore(32)

        async def submit(d: SimDevice, a: Assignment) -> None:
            async with gate:
                if killed.is_set():
                    return
                try:
                    status, _ = await d.post("/v1/proofs", d.proof_for(a))
                except (aiohttp.ClientError, OSError):
                    return
                if status == 202:
                    acked.add((a.task_id, d.device_id))
                    if len(acked) >= KILL_AFTER and not killed.is_set():
                        killed.set()
                        coord.kill()

        await asyncio.gather(*(submit(d, a) for d, a in work))
        assert killed.is_set() and KILL_AFTER <= len(acked) < PROOFS

        coord.start()
        for d in devices:
            d.coordinator_url = coord.url
        # Every acknowledged proof is in a block once the restarted coordinator catches up.
        for _ in range(300):
            receipts = {
                r.key for b in await microblock_chain(session, coord.url) for r in b.receipts
            }
            if acked <= receipts:
                break
            await asyncio.sleep(0.2)
        assert acked <= receipts
        # The rest are delivered again: accepted, or refused as duplicates if they had
        # been committed before the kill without the 202 reaching the device.
        for d, a in work:
            if (a.task_id, d.device_id) not in acked:
                status, body = await d.post("/v1/proofs", d.proof_for(a))
                assert status == 202 or body["error"]["code"] == "duplicate", body
        for _ in range(300):
            chain = await microblock_chain(session, coord.url)
            if sum(len(b.receipts) for b in chain) == PROOFS:
                break
            await asyncio.sleep(0.2)
        microblock.verify_chain(chain)  # links from genesis, no receipt twice
        keys = [r.key for b in chain for r in b.receipts]
        assert len(keys) == len(set(keys)) == PROOFS
        assert set(keys) == {(a.task_id, d.device_id) for d, a in work}
        # And every block ends anchored (on the embedded chain, which the restart replaced:
        # the blocks anchored before the kill are anchored again on the new one).
        for _ in range(300):
            anchoring = (await _get(session, f"{coord.url}/v1/status", headers=operator))[
                "anchoring"
            ]
            if anchoring["unanchored_blocks"] == 0 and anchoring["blocks_anchored"] == len(chain):
                break
            await asyncio.sleep(0.2)
        assert anchoring["blocks_anchored"] == len(chain), anchoring
    finally:
        await session.close()
        for d in devices:
            await d.stop()
        coord.stop()
