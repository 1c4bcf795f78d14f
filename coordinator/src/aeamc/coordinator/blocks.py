"""Microblocks (SPEC §6, §14.2): formation with their check draws, and the views of the chain."""

from __future__ import annotations

import json
import logging
import secrets
from typing import Any

from aeamc.shared import microblock, spotcheck
from aeamc.shared.refusals import not_found

from .attached import ANCHORING
from .context import Context
from .dbtx import Tx
from .membership import LAST_BLOCKED_SEQ
from .settlement import Settlement
from .store import blocks as block_rows
from .store import devices as device_rows
from .store import proofs as proof_rows

log = logging.getLogger(__name__)

#: A block's receipts: the oldest proofs past the last block's range. Only the narrow
#: ``proofs_receipts`` index is read, not the rows with their PoT and output (a test
#: checks the plan).
RECEIPTS_SQL = (
    "SELECT p.seq, p.task_id, p.device_id, p.signature, p.chunks FROM proofs p "
    "WHERE p.seq > ? ORDER BY p.seq LIMIT ?"
)


class BlockService:
    """Forms microblocks (stored through ``store/blocks.py``) and serves the chain."""

    def __init__(self, ctx: Context, settlement: Settlement) -> None:
        self.ctx = ctx
        self.settlement = settlement
        #: Whether the latest block took as many receipts as a block may hold.
        self.last_block_full = False

    async def form_block(self) -> int | None:
        """Commit the next block from receipts not yet in one; ``None`` when there are none.

        Selecting the receipts, writing the block with its seq range and scheduling its
        spot-checks happen in one transaction, so a receipt can never land in two blocks or
        none, nor lose its check, even across a crash. The proof rows themselves are only
        read (through a narrow covering index), never rewritten.
        """
        cfg = self.ctx.config
        now = self.ctx.clock()

        def txn(db: Tx) -> tuple[int, int] | None:
            # Plain tuples, not sqlite-utils dicts, and set-based statements: this runs
            # once per receipt, for blocks of up to 65,535 of them.
            c = db
            after = c.execute(f"SELECT {LAST_BLOCKED_SEQ}").fetchone()[0]
            rows = c.execute(RECEIPTS_SQL, [after, cfg.blocks.max_receipts]).fetchall()
            if not rows:
                return None
            last = c.execute(
                "SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1"
            ).fetchone()
            height = 0 if last is None else last[0] + 1
            previous = microblock.GENESIS_PREVIOUS if last is None else last[1]
            block = microblock.build_block(
                cluster_id=cfg.protocol.cluster_id,
                timestamp=now,
                previous_hash=previous,
                receipts=[microblock.Receipt(r[1], r[2], r[3]) for r in rows],
            )
            # The rows selected are exactly the unblocked ones up to the last seq taken: the
            # writer is the only one adding proofs, and it is running this.
            block_rows.insert_block(
                db,
                height=height,
                block_hash=block.block_hash,
                previous_hash=previous,
                timestamp=now,
                receipt_count=len(rows),
                header=block.header.encode(),
                payload=block.payload,
                first_seq=rows[0][0],
                last_seq=rows[-1][0],
            )
            self._schedule_block_checks(db, rows, height, now)
            return height, len(rows)

        formed = await self.ctx.db.write(txn)
        if formed is None:
            self.ctx.unblocked = 0
            return None
        height, receipts = formed
        self.last_block_full = receipts >= self.ctx.config.blocks.max_receipts
        self.ctx.unblocked = max(0, self.ctx.unblocked - receipts)
        self.ctx.count("blocks")
        self.ctx.wake_spot_checks.set()
        log.info("microblock %d formed with %d receipts", height, receipts)
        return height

    def _schedule_block_checks(
        self,
        db: Tx,
        rows: list[tuple[Any, ...]],
        height: int,
        now: int,
    ) -> None:
        """Schedule the spot-checks of a block's receipts (``rows``: seq, task, device,
        signature), in the block's transaction.

        A disputed task's replicas are checked on the chunks that differ. Otherwise each
        receipt is checked with its device's probability: the receipts of devices checked
        every time (new ones) are inserted by one set-based statement, the others drawn one
        by one. No indices are stored for these; they are derived when the challenge is sent.
        """
        checks = self.ctx.config.spot_checks
        c = db
        first, last = rows[0][0], rows[-1][0]
        # Disputed tasks are few (found through the tasks' state index): asking for them
        # once is cheaper than looking up every receipt's task.
        for task_id, device_id in c.execute(
            "SELECT p.task_id, p.device_id FROM tasks t JOIN proofs p ON p.task_id = t.task_id "
            "WHERE t.state = 'disputed' AND p.seq BETWEEN ? AND ?",
            [first, last],
        ).fetchall():
            self.settlement.schedule_dispute_check(
                db, task_id=task_id, device_id=device_id, height=height, now=now
            )
        # A receipt's probability depends on its device's record and its task's chunk count
        # (only below k, where one challenge opens fewer chunks): decided once per device of
        # the block, with one query for them all rather than a lookup per receipt.
        devices = {r[2] for r in rows}
        passes = device_rows.passes(db, sorted(devices))
        k = checks.k
        # At k chunks or more a device's rate is its lowest (smaller tasks are checked at
        # least as often), so a device at 1.0 there is checked on every receipt.
        base = {d: checks.check_probability(passes.get(d, 0), k) for d in devices}
        always = sorted(d for d, p in base.items() if p >= 1.0)
        # The others: one uniform 64-bit draw per receipt, from one read of the system RNG,
        # against the receipt's probability scaled to 2^64 (looked up by device and chunks).
        scale = float(1 << 64)
        sampled = [r for r in rows if base[r[2]] < 1.0]
        threshold = {
            (d, c): int(checks.check_probability(passes.get(d, 0), c) * scale)
            for d, c in {(r[2], r[4] if r[4] < k else k) for r in sampled}
        }
        draws = memoryview(secrets.token_bytes(8 * len(sampled))).cast("Q")
        drawn = [
            (r[1], r[2], height, now, now)
            for r, draw in zip(sampled, draws, strict=True)
            if draw < threshold[r[2], r[4] if r[4] < k else k]
        ]
        # OR IGNORE: a disputed receipt's check, scheduled above, stays as it is.
        if always:
            proof_rows.check_every_receipt(
                db, height=height, now=now, first=first, last=last, device_ids=always
            )
        proof_rows.check_drawn(db, drawn)

    def challenge_indices(
        self, stored: str | None, block_hash: bytes, task_id: str, chunks: int
    ) -> list[int]:
        """A check's chunk indices: those stored (a dispute's differing chunks), else the
        SPEC §2 derivation from the block hash — a pure function, so it need not be stored
        for every receipt checked, and the device could not know it before the block."""
        if stored is not None:
            return list(json.loads(stored))
        return spotcheck.challenge_indices(
            block_hash, task_id, self.ctx.config.spot_checks.k, chunks
        )

    async def blocks_view(self, start: int = 0, limit: int = 100) -> list[dict[str, Any]]:
        """Blocks from height ``start`` on (at most ``limit``), hashes in lowercase hex."""
        rows = await self.ctx.db.read(
            lambda db: list(
                db.query(
                    "SELECT height, hash, previous_hash, "
                    "timestamp, receipt_count FROM blocks WHERE height >= ? "
                    "ORDER BY height LIMIT ?",
                    [start, limit],
                )
            )
        )
        for r in rows:
            r["hash"], r["previous_hash"] = bytes(r["hash"]).hex(), bytes(r["previous_hash"]).hex()
        return rows

    async def block_bytes(self, height: int) -> bytes:
        """The exact bytes of block ``height`` (header then payload), as hashed and anchored."""
        row = await self.ctx.db.read(
            lambda db: next(
                iter(db.query("SELECT header, payload FROM blocks WHERE height=?", [height])),
                None,
            )
        )
        if row is None:
            raise not_found(f"microblock {height}")
        return bytes(row["header"]) + bytes(row["payload"])

    async def block_view(self, height: int) -> dict[str, Any]:
        """Block ``height`` decoded, each receipt with its spot-check state, and its anchor."""
        raw = await self.block_bytes(height)
        view = microblock.decode(raw).to_json()
        checks = await self.ctx.db.read(
            lambda db: {
                (r["task_id"], r["device_id"]): r
                for r in db.query(
                    "SELECT task_id, device_id, state, detail FROM spot_checks "
                    "WHERE block_height=?",
                    [height],
                )
            }
        )
        for r in view["receipts"]:  # type: ignore[attr-defined]
            c = checks.get((r["task_id"], r["device_id"]))
            r["spot_check"] = c["state"] if c else "not sampled"
        view["height"] = height
        view["anchor"] = await self._block_anchor(height)
        return view

    async def _block_anchor(self, height: int) -> dict[str, Any] | None:
        """The anchor covering block ``height`` (with its confirmations), or ``None``."""
        row = await self.ctx.db.read(
            lambda db: next(
                iter(
                    db.query(
                        "SELECT state, root, tx_hash, block_number, chain_id, contract, "
                        "leaf_index, tree_size FROM block_anchors "
                        "WHERE height=? AND anchor_id IS NOT NULL",
                        [height],
                    )
                ),
                None,
            )
        )
        if row is None:
            return None
        if isinstance(row.get("root"), bytes):
            row["root"] = row["root"].hex()
        section = self.ctx.status_sections.get(ANCHORING)
        head = (await section.status()).get("head") if section is not None else None
        row["confirmations"] = (
            head - row["block_number"] + 1
            if isinstance(head, int) and isinstance(row["block_number"], int)
            else None
        )
        return row
