"""Benchmark 3, microblock formation: the time to select, form, hash and persist a block
of N receipts (and schedule its spot-checks) with the coordinator's own ``form_block``
on a real SQLite file with ``synchronous=FULL``; and the database bytes per receipt.

The receipts are real rows (a signed-PoT-sized JSON, an 8-chunk output, a 64-byte
signature) written beforehand, as ingestion would have left them. Two fleets: new devices
(no passed checks yet, so every receipt gets its spot-check scheduled: the heaviest case)
and trusted ones (100 passes each, so about one receipt in ten is checked).

Reference, in the same run: encoding and hashing the same receipts and writing the
payload to a file with one fsync — the least that "form, hash and persist" can cost.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from aeamc.coordinator.config import BlockConfig, CoordinatorConfig, ProtocolConfig
from aeamc.coordinator.db import Database
from aeamc.coordinator.service import Coordinator
from aeamc.shared import microblock
from aeamc.shared.identity import SigningKey
from aeamc.shared.tasks.registry import discover

from . import procs, stats

TARGET_MS_10K = 50.0
_DEVICES = 100
_POT_JSON = json.dumps({"pad": "x" * 560})
_OUTPUT = os.urandom(8 * 36)
CHUNKS = 8
FLEETS = {"new": 0, "trusted": 100}


def _fill(db: Database, n: int, serial: int, passes: int) -> list[tuple[str, str, bytes]]:
    """N unblocked proofs for tasks of 4 chunks; returns the receipts (for the reference)."""
    now = time.time_ns() // 1_000_000
    receipts = []
    for i in range(n):
        receipts.append((f"t-{serial}-{i:06d}", f"{i % _DEVICES:032x}", os.urandom(64)))

    def txn(sdb: Any) -> None:
        c = sdb.conn
        c.executemany(
            "INSERT OR IGNORE INTO devices (device_id, public_key, state, capabilities, "
            "enrolled_at, passes) VALUES (?, ?, 'active', '{}', ?, ?)",
            [(f"{d:032x}", "00" * 32, now, passes) for d in range(_DEVICES)],
        )
        c.executemany(
            "INSERT INTO tasks (task_id, kind, params, chunks, replicas, created_at, state) "
            "VALUES (?, 'sha256-chain', '{}', ?, 1, ?, 'queued')",
            [(t, CHUNKS, now) for t, _, _ in receipts],
        )
        # Completed the way the coordinator completes a task (its lifecycle table).
        for state in ("running", "completed"):
            c.executemany(
                "UPDATE tasks SET state=? WHERE task_id=?", [(state, t) for t, _, _ in receipts]
            )
        c.executemany(
            "INSERT INTO proofs (task_id, device_id, pot, signature, output, output_digest, "
            "accepted_at, chunks) VALUES (?,?,?,?,?,?,?,?)",
            [(t, d, _POT_JSON, s, _OUTPUT, "00" * 32, now, CHUNKS) for t, d, s in receipts],
        )

    db.write_sync(txn)
    return receipts


def _reference(receipts: list[tuple[str, str, bytes]], path: Path) -> float:
    start = time.perf_counter()
    payload = microblock.encode_payload([microblock.Receipt(*r) for r in receipts])
    digest = hashlib.sha256(payload).digest()
    with path.open("wb") as f:
        f.write(digest + payload)
        f.flush()
        os.fsync(f.fileno())
    return time.perf_counter() - start


def _db_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


async def _measure_size(n: int, runs: int, root: Path, fleet: str) -> dict[str, Any]:
    state = root / f"n{n}-{fleet}"
    config = CoordinatorConfig(
        state_dir=state,
        blocks=BlockConfig(max_receipts=n),
        protocol=ProtocolConfig(),
    )
    db = Database(config.db_path)
    db.open()
    coordinator = Coordinator(config, SigningKey.from_seed(os.urandom(32)), db, discover())
    times, refs, per_receipt = [], [], []
    try:
        for run in range(runs):
            receipts = await asyncio.to_thread(_fill, db, n, run, FLEETS[fleet])
            await db.checkpoint()
            before = _db_bytes(config.db_path)
            start = time.perf_counter()
            height = await coordinator.blocks.form_block()
            times.append(time.perf_counter() - start)
            assert height == run, (height, run)
            await db.checkpoint()
            per_receipt.append((_db_bytes(config.db_path) - before) / n)
            refs.append(_reference(receipts, state / f"ref-{run}.bin"))
        total = _db_bytes(config.db_path) / (n * runs)
    finally:
        db.close()
        shutil.rmtree(state, ignore_errors=True)
    return {
        "receipts": n,
        "fleet": fleet,
        "form_ms": stats.summary([t * 1000 for t in times]),
        "reference_ms": stats.summary([r * 1000 for r in refs]),
        "ratio_to_reference": stats.ratio_summary(times, refs),
        "block_bytes_per_receipt": stats.summary(per_receipt),
        "db_bytes_per_receipt_total": total,
    }


def measure(sizes: tuple[int, ...] = (100, 1000, 10_000, 65_535), runs: int = 5) -> dict[str, Any]:
    root = procs.workdir("blocks")
    try:
        results = [
            asyncio.run(_measure_size(n, runs if n <= 10_000 else max(2, runs // 2), root, fleet))
            for fleet in FLEETS
            for n in sizes
        ]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ten_k = next((r for r in results if r["receipts"] == 10_000 and r["fleet"] == "new"), None)
    return {
        "sizes": results,
        "target_ms_10k": TARGET_MS_10K,
        "target_met": None if ten_k is None else ten_k["form_ms"]["median"] < TARGET_MS_10K,
        "chunks_per_task": CHUNKS,
    }


if __name__ == "__main__":
    sizes = tuple(int(a) for a in sys.argv[1:]) or (100, 1000, 10_000)
    json.dump(measure(sizes, 3), sys.stdout, indent=2)
