"""Receipt proof bundles (SPEC §8) from what the coordinator stored.

A bundle is only handed out once the receipt's block is covered by a *final* anchor: a
bundle naming a root that a reorg could still remove would mislead the auditor.
"""

from __future__ import annotations

import json
from typing import Any

from aeamc.shared import merkle, microblock
from aeamc.shared.bundle import build_bundle
from aeamc.shared.messages import PoT, parse_signed
from aeamc.shared.refusals import Fault, Refusal, not_found

from ..dbtx import Tx
from ..groupcommit import GroupCommit
from ..membership import height_of


def _one(db: Tx, sql: str, args: list[Any]) -> dict[str, Any] | None:
    return next(iter(db.query(sql, args)), None)


def _gather(db: Tx, task_id: str, device_id: str) -> dict[str, Any]:
    proof = _one(
        db,
        f"SELECT pot, {height_of('p.seq')} AS block_height FROM proofs p "  # noqa: S608
        "WHERE task_id=? AND device_id=?",
        [task_id, device_id],
    )
    if proof is None:
        raise not_found(f"receipt of task {task_id} by device {device_id}")
    if proof["pot"] == "":
        raise Refusal(
            Fault.GONE,
            "erased",
            f"device {device_id} was erased at its owner's request: its public key and signed "
            "proof are gone, so no bundle can be built; the receipt itself stays in the block",
        )
    height = proof["block_height"]
    if height is None:
        raise Refusal(Fault.CONFLICT, "not_anchored", "the receipt is not in a microblock yet")
    block = _one(
        db,
        "SELECT header, payload, anchor_id, leaf_index FROM blocks WHERE height=?",
        [height],
    )
    if block is None:  # the height came from the blocks table itself
        raise not_found(f"microblock {height}")
    anchor = (
        _one(db, "SELECT * FROM anchors WHERE id=?", [block["anchor_id"]])
        if block["anchor_id"] is not None
        else None
    )
    if anchor is None:
        raise Refusal(Fault.CONFLICT, "not_anchored", f"microblock {height} waits for its anchor")
    if anchor["state"] != "final":
        raise Refusal(
            Fault.CONFLICT,
            "not_anchored",
            f"microblock {height} is in anchor {anchor['id']}, which is {anchor['state']}",
        )
    leaves = [
        bytes(r["hash"])
        for r in db.query(
            "SELECT b.hash FROM anchor_leaves l JOIN blocks b ON b.height = l.height "
            "WHERE l.anchor_id=? ORDER BY l.leaf_index",
            [anchor["id"]],
        )
    ]
    device = _one(db, "SELECT public_key FROM devices WHERE device_id=?", [device_id])
    if device is None:
        raise not_found(f"the public key of device {device_id}")
    return {
        "pot": proof["pot"],
        "public_key": device["public_key"],
        "raw": bytes(block["header"]) + bytes(block["payload"]),
        "leaf_index": block["leaf_index"],
        "anchor": anchor,
        "leaves": leaves,
    }


async def receipt_bundle(db: GroupCommit, task_id: str, device_id: str) -> dict[str, Any]:
    """The bundle for one receipt; 404 if unknown, 409 ``not_anchored`` until final."""
    g = await db.read(lambda d: _gather(d, task_id, device_id))
    a = g["anchor"]
    if merkle.root(g["leaves"]) != bytes(a["root"]):  # stored data disagree: never serve it
        raise RuntimeError(f"anchor {a['id']}: stored leaves do not give its root")
    anchor = {
        "root": bytes(a["root"]).hex(),
        "leaf_index": g["leaf_index"],
        "tree_size": a["tree_size"],
        "path": [p.hex() for p in merkle.audit_path(g["leaves"], g["leaf_index"])],
        "chain_id": a["chain_id"],
        "contract": a["contract"],
        "tx_hash": a["tx_hash"],
        "block_number": a["block_number"],
    }
    pot = parse_signed(json.loads(g["pot"]), PoT)
    return build_bundle(pot, bytes.fromhex(g["public_key"]), microblock.decode(g["raw"]), anchor)
