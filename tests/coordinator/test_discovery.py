"""The coordinator over real mDNS on loopback: it advertises itself with the TXT keys of
SPEC §9 and records agents it sees as candidates."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
from pathlib import Path

from aeamc.shared.discovery import (
    AGENT_SERVICE_TYPE,
    COORDINATOR_SERVICE_TYPE,
    parse_coordinator_txt,
)
from aeamc.shared.identity import SigningKey
from aeamc.shared.runtime.mdns import Mdns, ServiceEvent
from tests.support.coordinator import CoordinatorProcess
from tests.support.device import agent_advert


def _mdns_coordinator(tmp_path: Path) -> CoordinatorProcess:
    """A started coordinator that advertises and browses over mDNS on loopback."""
    coord = CoordinatorProcess(
        tmp_path / "c",
        settings={"server": {"mdns": True, "mdns_interfaces": "127.0.0.1"}},
    )
    coord.init()
    coord.start()
    return coord


async def test_advertises_and_records_candidates(tmp_path: Path) -> None:
    coord = _mdns_coordinator(tmp_path)
    mdns = Mdns(["127.0.0.1"])
    seen: list[ServiceEvent] = []
    try:
        mdns.browse(COORDINATOR_SERVICE_TYPE, seen.append)
        key = SigningKey.from_seed(os.urandom(32))
        advert = agent_advert(key)
        await mdns.async_advertise(
            AGENT_SERVICE_TYPE,
            key.device_id,
            port=9999,
            properties=advert.txt(),
            addresses=["127.0.0.1"],
        )
        ours = coord.request("GET", "/v1/health")[1]["coordinator_id"]

        def our_record() -> object:
            # Other coordinators may advertise on this host's loopback too: pick ours.
            return next(
                (e.record for e in seen if e.record and e.record.name.startswith(ours)), None
            )

        for _ in range(100):
            if our_record():
                break
            await asyncio.sleep(0.1)
        record = our_record()
        assert record is not None
        txt = parse_coordinator_txt(record.properties, name=record.name)
        assert txt.coordinator_id == ours
        assert record.port == coord.port and "127.0.0.1" in record.addresses
        assert txt.cluster_id == 1 and txt.proto == 1
        # The CA fingerprint an agent (and its owner) can compare with `status`.
        assert txt.ca_fingerprint == coord.request("GET", "/v1/health")[1]["ca_fingerprint"]

        def candidates() -> dict[str, dict[str, str]]:
            with sqlite3.connect(coord.state_dir / "coordinator.db") as db:
                rows = db.execute("SELECT device_id, port, txt FROM candidates").fetchall()
            return {r[0]: {"port": r[1], **json.loads(r[2])} for r in rows}

        for _ in range(100):
            if key.device_id in candidates():
                break
            await asyncio.sleep(0.1)
        found = candidates()[key.device_id]
        assert found["port"] == 9999 and found["kinds"] == "sha256-chain" and found["bat"] == "0"
    finally:
        await mdns.async_close()
        coord.stop()


async def test_a_candidate_is_exported_and_erased_and_not_recorded_again(tmp_path: Path) -> None:
    """The operator exports and erases an agent only seen over mDNS; it keeps advertising
    (withdrawn and announced again), and the coordinator does not record it again."""
    coord = _mdns_coordinator(tmp_path)
    mdns = Mdns(["127.0.0.1"])
    operator = coord.token("operator")

    def candidates() -> set[str]:
        with sqlite3.connect(coord.state_dir / "coordinator.db") as db:
            return {r[0] for r in db.execute("SELECT device_id FROM candidates")}

    async def advertise(key: SigningKey, port: int) -> str:
        return await mdns.async_advertise(
            AGENT_SERVICE_TYPE,
            key.device_id,
            port=port,
            properties=agent_advert(key).txt(),
            addresses=["127.0.0.1"],
        )

    async def until_recorded(device_id: str) -> None:
        for _ in range(100):
            if device_id in candidates():
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{device_id} was not recorded")

    try:
        key, later = (SigningKey.from_seed(os.urandom(32)) for _ in range(2))
        name = await advertise(key, 9999)
        await until_recorded(key.device_id)

        export_path = f"/v1/devices/{key.device_id}/export"
        status, export = coord.request("GET", export_path, token=operator)
        assert status == 200, export
        assert export["device"] is None and export["mdns_candidate"]["port"] == 9999
        assert export["mdns_candidate"]["txt"]["pk"] == key.public_key.hex()
        status, erased = coord.request("DELETE", f"/v1/devices/{key.device_id}", token=operator)
        assert status == 200 and erased["deleted"] == {"candidates": 1}, erased
        assert key.device_id not in candidates()
        # Nothing is held now, and an id nobody knows is not found either.
        nobody = SigningKey.from_seed(os.urandom(32)).device_id
        for device_id in (key.device_id, nobody):
            assert coord.request("GET", f"/v1/devices/{device_id}/export", token=operator)[0] == 404
            assert coord.request("DELETE", f"/v1/devices/{device_id}", token=operator)[0] == 404

        # It goes on advertising: withdrawn, announced afresh with other data. Another agent
        # announced after it is recorded, so its announcement was heard too.
        await mdns.async_withdraw(name)
        await advertise(key, 9998)
        await advertise(later, 9997)
        await until_recorded(later.device_id)
        await asyncio.sleep(1.0)
        assert key.device_id not in candidates()
    finally:
        await mdns.async_close()
        coord.stop()
