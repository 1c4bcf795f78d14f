"""Anchors in SQLite: every function here runs inside one writer (or reader) transaction.

The order of writes is what makes anchoring crash-safe: an anchor's intent — root,
leaves, nonce, fees and the signed transaction — is committed, and its blocks marked as
taken, before the transaction reaches any node; a replacement is stored before it is
broadcast. After ``kill -9`` the service finds every transaction that may be on the
network in ``anchor_txs``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from aeamc.shared.anchoring import LIVE, Fees, Inclusion, Receipt, State, Tracked

from ..dbtx import Tx
from .wallet import SignedTx

_LIVE_SQL = "('pending','sent','included')"
_OWNING_SQL = "('pending','sent','included','final')"


@dataclass(frozen=True)
class Target:
    """Where anchors go: a contract on a chain, from one sender."""

    chain_id: int
    contract: str
    embedded: bool
    sender: str

    @property
    def nonce_key(self) -> str:
        """The ``meta`` key under which the next nonce of this sender on this chain is kept."""
        return f"anchor.next_nonce:{self.chain_id}:{self.sender.lower()}"


@dataclass(frozen=True)
class Attempt:
    """One signed transaction of an anchor: what was signed (nonce, fees, gas limit) and
    the signed bytes, kept together so a stored row always matches what was broadcast."""

    nonce: int
    fees: Fees
    gas: int
    signed: SignedTx


def _one(db: Tx, sql: str, args: Sequence[Any] = ()) -> dict[str, Any] | None:
    return next(iter(db.query(sql, list(args))), None)


def _target_sql(alias: str = "") -> str:
    p = f"{alias}." if alias else ""
    return f"{p}chain_id = ? AND lower({p}contract) = lower(?) AND {p}embedded = ?"


def _target_args(t: Target) -> list[Any]:
    return [t.chain_id, t.contract, int(t.embedded)]


# -- start-up ----------------------------------------------------------------------------------


def release_foreign(db: Tx, target: Target, now: int) -> int:
    """Give back blocks held by anchors that are not on ``target``'s chain any more.

    An embedded chain dies with the process, so all its anchors are abandoned at start;
    live anchors sent to another chain or contract are abandoned too. Blocks anchored
    elsewhere are anchored again here: "anchored" means on the configured contract.
    Returns how many blocks went back to the queue.
    """
    if target.embedded:
        db.execute(
            f"UPDATE anchors SET state='abandoned', detail=? WHERE embedded=1 "  # noqa: S608
            f"AND state IN {_OWNING_SQL}",
            ["the embedded chain was lost when the coordinator stopped"],
        )
    db.execute(
        f"UPDATE anchors SET state='abandoned', detail=? WHERE state IN {_LIVE_SQL} "  # noqa: S608
        f"AND NOT ({_target_sql()})",
        ["the coordinator now anchors on another chain or contract", *_target_args(target)],
    )
    cur = db.execute(
        f"UPDATE blocks SET anchor_id=NULL, leaf_index=NULL WHERE anchor_id IS NOT NULL "  # noqa: S608
        f"AND anchor_id NOT IN (SELECT id FROM anchors WHERE state IN {_OWNING_SQL} "
        f"AND {_target_sql()})",
        _target_args(target),
    )
    return int(cur.rowcount)


def stored_next_nonce(db: Tx, target: Target) -> int | None:
    """The next nonce stored with the last intent for ``target``; ``None`` if none yet."""
    row = _one(db, "SELECT value FROM meta WHERE key=?", [target.nonce_key])
    return int(row["value"]) if row else None


# -- reads -------------------------------------------------------------------------------------


def live_anchor(db: Tx, target: Target) -> dict[str, Any] | None:
    """The one anchor in flight, if any: the service starts no other until it settles."""
    return _one(
        db,
        f"SELECT * FROM anchors WHERE state IN {_LIVE_SQL} AND {_target_sql()} "  # noqa: S608
        "ORDER BY id LIMIT 1",
        _target_args(target),
    )


def anchor_txs(db: Tx, anchor_id: int) -> list[dict[str, Any]]:
    """Every transaction signed for the anchor, oldest first; the last is the current one."""
    return list(
        db.query(
            "SELECT * FROM anchor_txs WHERE anchor_id=? ORDER BY created_at, rowid", [anchor_id]
        )
    )


def tracked(row: dict[str, Any], txs: Sequence[dict[str, Any]]) -> Tracked:
    """The lifecycle's view of a stored anchor."""
    fees = (
        Fees(row["max_fee_per_gas"], row["max_priority_fee_per_gas"])
        if row["max_fee_per_gas"] is not None
        else None
    )
    included = None
    if row["block_number"] is not None:
        included = Inclusion(row["tx_hash"], row["block_number"], bytes(row["block_hash"]))
    return Tracked(
        state=State(row["state"]),
        nonce=row["nonce"],
        fees=fees,
        tx_hashes=tuple(t["tx_hash"] for t in txs),
        first_broadcast_ms=row["first_broadcast_at"],
        last_broadcast_ms=row["last_broadcast_at"],
        included=included,
    )


def sibling_txs(db: Tx, target: Target, nonce: int, anchor_id: int) -> list[dict[str, Any]]:
    """Transactions of reorged anchors at ``nonce``: one of them may still be mined."""
    return list(
        db.query(
            f"SELECT t.tx_hash, t.anchor_id FROM anchor_txs t JOIN anchors a "  # noqa: S608
            f"ON a.id = t.anchor_id WHERE a.state='reorged' AND t.nonce=? AND a.id != ? "
            f"AND {_target_sql('a')}",
            [nonce, anchor_id, *_target_args(target)],
        )
    )


def unresolved_reorged(db: Tx, target: Target) -> list[dict[str, Any]]:
    """Reorged anchors whose nonce no final anchor has used since: a transaction of theirs
    could still be mined, so a new anchor must either reuse the nonce or check first."""
    rows = list(
        db.query(
            f"SELECT id, nonce FROM anchors WHERE state='reorged' AND nonce IS NOT NULL "  # noqa: S608
            f"AND {_target_sql()} AND nonce > COALESCE((SELECT max(nonce) FROM anchors "
            f"WHERE state='final' AND {_target_sql()}), -1) ORDER BY nonce, id",
            _target_args(target) * 2,
        )
    )
    for r in rows:
        txs = anchor_txs(db, r["id"])
        r["tx_hashes"] = [t["tx_hash"] for t in txs]
        last = txs[-1] if txs else None
        r["fees"] = (
            Fees(last["max_fee_per_gas"], last["max_priority_fee_per_gas"]) if last else None
        )
    return rows


def unanchored_blocks(db: Tx) -> list[tuple[int, bytes]]:
    """Blocks waiting for a root, in chain order."""
    return [
        (r["height"], bytes(r["hash"]))
        for r in db.query("SELECT height, hash FROM blocks WHERE anchor_id IS NULL ORDER BY height")
    ]


# -- writes ------------------------------------------------------------------------------------


def _take_blocks(db: Tx, anchor_id: int, heights: Sequence[int]) -> None:
    for leaf_index, height in enumerate(heights):
        db.execute(
            "INSERT INTO anchor_leaves (anchor_id, leaf_index, height) VALUES (?,?,?)",
            [anchor_id, leaf_index, height],
        )
        cur = db.execute(
            "UPDATE blocks SET anchor_id=?, leaf_index=? WHERE height=? AND anchor_id IS NULL",
            [anchor_id, leaf_index, height],
        )
        if cur.rowcount != 1:  # one sender: only a bug can get here; the savepoint rolls back
            raise RuntimeError(f"block {height} is already held by another anchor")


def create_intent(
    db: Tx,
    target: Target,
    *,
    root: bytes,
    heights: Sequence[int],
    attempt: Attempt,
    now: int,
) -> int:
    """Store the anchor, its leaves and its signed transaction, and take its blocks."""
    cur = db.execute(
        "INSERT INTO anchors (root, tree_size, chain_id, contract, embedded, sender, nonce, "
        "state, max_fee_per_gas, max_priority_fee_per_gas, tx_hash, created_at) "
        "VALUES (?,?,?,?,?,?,?, 'pending', ?,?,?,?) RETURNING id",
        [
            root,
            len(heights),
            target.chain_id,
            target.contract,
            int(target.embedded),
            target.sender,
            attempt.nonce,
            attempt.fees.max_fee_per_gas,
            attempt.fees.max_priority_fee_per_gas,
            attempt.signed.tx_hash,
            now,
        ],
    )
    anchor_id = int(cur.fetchone()[0])
    _insert_tx(db, anchor_id, attempt, now)
    _take_blocks(db, anchor_id, heights)
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value=excluded.value",
        [target.nonce_key, str(attempt.nonce + 1)],
    )
    return anchor_id


def create_adopted(
    db: Tx,
    target: Target,
    *,
    root: bytes,
    heights: Sequence[int],
    receipt: Receipt,
    now: int,
) -> int:
    """Record a root found already on chain (never sent again), as included where it is."""
    cur = db.execute(
        "INSERT INTO anchors (root, tree_size, chain_id, contract, embedded, sender, state, "
        "tx_hash, block_number, block_hash, gas_used, effective_gas_price, created_at, "
        "included_at, detail) VALUES (?,?,?,?,?,?, 'included', ?,?,?,?,?,?,?, ?) RETURNING id",
        [
            root,
            len(heights),
            target.chain_id,
            target.contract,
            int(target.embedded),
            target.sender,
            receipt.tx_hash,
            receipt.block_number,
            receipt.block_hash,
            receipt.gas_used,
            receipt.effective_gas_price,
            now,
            now,
            "the root was already anchored; adopted from the chain",
        ],
    )
    anchor_id = int(cur.fetchone()[0])
    _take_blocks(db, anchor_id, heights)
    return anchor_id


def _insert_tx(db: Tx, anchor_id: int, attempt: Attempt, now: int) -> None:
    fees = attempt.fees
    db.execute(
        "INSERT INTO anchor_txs (tx_hash, anchor_id, nonce, max_fee_per_gas, "
        "max_priority_fee_per_gas, gas_limit, raw, created_at) VALUES (?,?,?,?,?,?,?,?)",
        [
            attempt.signed.tx_hash,
            anchor_id,
            attempt.nonce,
            fees.max_fee_per_gas,
            fees.max_priority_fee_per_gas,
            attempt.gas,
            attempt.signed.raw,
            now,
        ],
    )


def add_replacement(db: Tx, anchor_id: int, attempt: Attempt, now: int) -> None:
    """Store a same-nonce replacement; it becomes the current transaction, not yet sent."""
    _insert_tx(db, anchor_id, attempt, now)
    fees = attempt.fees
    db.execute(
        "UPDATE anchors SET tx_hash=?, max_fee_per_gas=?, max_priority_fee_per_gas=?, "
        "first_broadcast_at=NULL, last_broadcast_at=NULL WHERE id=?",
        [attempt.signed.tx_hash, fees.max_fee_per_gas, fees.max_priority_fee_per_gas, anchor_id],
    )


def mark_broadcast(db: Tx, anchor_id: int, now: int) -> None:
    """A node accepted the current transaction: ``pending`` becomes ``sent``; the first
    broadcast time is kept, the last one updated."""
    db.execute(
        "UPDATE anchors SET state=CASE WHEN state='pending' THEN 'sent' ELSE state END, "
        "first_broadcast_at=COALESCE(first_broadcast_at, ?), last_broadcast_at=? WHERE id=?",
        [now, now, anchor_id],
    )


def mark_included(db: Tx, anchor_id: int, receipt: Receipt, now: int, detail: str) -> None:
    """The anchor is in the block ``receipt`` names; confirmations count from there."""
    db.execute(
        "UPDATE anchors SET state='included', tx_hash=?, block_number=?, block_hash=?, "
        "gas_used=?, effective_gas_price=?, included_at=?, detail=? WHERE id=?",
        [
            receipt.tx_hash,
            receipt.block_number,
            receipt.block_hash,
            receipt.gas_used,
            receipt.effective_gas_price,
            now,
            detail,
            anchor_id,
        ],
    )


def mark_final(db: Tx, anchor_id: int, now: int, detail: str) -> None:
    """The anchor is final: its blocks are anchored for good."""
    db.execute(
        "UPDATE anchors SET state='final', final_at=?, detail=? WHERE id=?",
        [now, detail, anchor_id],
    )


def requeue(db: Tx, anchor_id: int, state: State, detail: str) -> int:
    """The anchor gives up; its blocks wait for the next root. Returns how many."""
    if state in LIVE or state is State.FINAL:
        raise ValueError(f"{state} does not give blocks back")
    db.execute("UPDATE anchors SET state=?, detail=? WHERE id=?", [str(state), detail, anchor_id])
    cur = db.execute(
        "UPDATE blocks SET anchor_id=NULL, leaf_index=NULL WHERE anchor_id=?", [anchor_id]
    )
    return int(cur.rowcount)


def revive(db: Tx, anchor_id: int, receipt: Receipt, now: int, detail: str) -> None:
    """A reorged anchor's transaction was mined after all: it owns its blocks again.

    Its blocks are free at this point (the caller has dropped whichever anchor held them),
    because a newer anchor only ever took them at the same nonce.
    """
    mark_included(db, anchor_id, receipt, now, detail)
    for leaf in db.query(
        "SELECT leaf_index, height FROM anchor_leaves WHERE anchor_id=?", [anchor_id]
    ):
        cur = db.execute(
            "UPDATE blocks SET anchor_id=?, leaf_index=? WHERE height=? AND anchor_id IS NULL",
            [anchor_id, leaf["leaf_index"], leaf["height"]],
        )
        if cur.rowcount != 1:
            raise RuntimeError(f"block {leaf['height']} is held by another anchor")


def anchor_of_tx(db: Tx, tx_hash: str) -> int | None:
    """The anchor that signed ``tx_hash``; ``None`` for a transaction not ours."""
    row = _one(db, "SELECT anchor_id FROM anchor_txs WHERE tx_hash=?", [tx_hash])
    return int(row["anchor_id"]) if row else None


# -- status ------------------------------------------------------------------------------------


def summary(db: Tx, target: Target | None) -> dict[str, Any]:
    """Block counts (anchored, unanchored, queued) and, once a target is known, anchors
    per state, live anchors and the last final anchor: the stored half of the status."""
    blocks = _one(
        db,
        "SELECT count(*) AS total, "
        "sum(CASE WHEN anchor_id IS NULL THEN 1 ELSE 0 END) AS queued, "
        "sum(CASE WHEN a.state = 'final' THEN 1 ELSE 0 END) AS final "
        "FROM blocks b LEFT JOIN anchors a ON a.id = b.anchor_id",
    ) or {"total": 0, "queued": 0, "final": 0}
    out: dict[str, Any] = {
        "blocks_anchored": blocks["final"] or 0,
        "unanchored_blocks": (blocks["total"] or 0) - (blocks["final"] or 0),
        "queued_blocks": blocks["queued"] or 0,
    }
    if target is None:
        return out
    states = {
        r["state"]: r["n"]
        for r in db.query(
            f"SELECT state, count(*) AS n FROM anchors WHERE {_target_sql()} GROUP BY state",  # noqa: S608
            _target_args(target),
        )
    }
    last = _one(
        db,
        f"SELECT id, root, tree_size, tx_hash, block_number, gas_used, final_at FROM anchors "  # noqa: S608
        f"WHERE state='final' AND {_target_sql()} ORDER BY final_at DESC, id DESC LIMIT 1",
        _target_args(target),
    )
    out["anchors"] = states
    out["live_anchors"] = sum(states.get(str(s), 0) for s in LIVE)
    out["last_final_anchor"] = (
        None
        if last is None
        else {
            "id": last["id"],
            "root": bytes(last["root"]).hex(),
            "blocks": last["tree_size"],
            "tx_hash": last["tx_hash"],
            "block_number": last["block_number"],
            "gas_used": last["gas_used"],
            "final_at": last["final_at"],
        }
    )
    return out
