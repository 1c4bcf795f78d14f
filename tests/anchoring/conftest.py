"""Fixtures for anchoring tests: real anvil nodes (tests/fixtures/anvil.py), a coordinator
database with real microblocks, and the checks every scenario ends with."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils

from aeamc.coordinator.anchoring.chain import Chain
from aeamc.coordinator.anchoring.service import AnchoringService
from aeamc.coordinator.anchoring.wallet import FileWallet, ensure_wallet_file
from aeamc.coordinator.config import CoordinatorConfig, parse_config
from aeamc.coordinator.db import Database
from aeamc.shared import merkle, microblock
from tests.fixtures.anvil import AnvilNode, anvil, anvil_bin, load_artifact  # noqa: F401

ABI = load_artifact("MicroblockAnchor")["abi"]
FAST_CHAIN = {
    "anchor_interval_s": 0.2,
    "poll_s": 0.1,
    "confirmations": 2,
    "rpc_timeout_s": 3.0,
    "stuck_after_s": 60.0,
}


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Host:
    """The parts of the coordinator the anchoring service uses: storage and clock."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.clock = now_ms


def _add_blocks(db: sqlite_utils.Database, n: int) -> list[int]:
    last = next(
        iter(db.query("SELECT height, hash, last_seq FROM blocks ORDER BY height DESC LIMIT 1")),
        None,
    )
    height = 0 if last is None else last["height"] + 1
    previous = microblock.GENESIS_PREVIOUS if last is None else bytes(last["hash"])
    # Each block holds one receipt, of the next proof seq (the range a formed block records).
    seq = 1 if last is None else last["last_seq"] + 1
    heights = []
    for _ in range(n):
        ts = now_ms()
        block = microblock.build_block(
            cluster_id=1,
            timestamp=ts,
            previous_hash=previous,
            receipts=[microblock.Receipt(f"t-{height}", "ab" * 16, bytes(64))],
        )
        db.execute(
            "INSERT INTO blocks (height, hash, previous_hash, timestamp, receipt_count, header, "
            "payload, first_seq, last_seq) VALUES (?,?,?,?,?,?,?,?,?)",
            [
                height,
                block.block_hash,
                previous,
                ts,
                1,
                block.header.encode(),
                block.payload,
                seq,
                seq,
            ],
        )
        heights.append(height)
        previous = block.block_hash
        height += 1
        seq += 1
    return heights


async def add_blocks(db: Database, n: int) -> list[int]:
    """Append ``n`` real, hash-chained microblocks, as the block loop would."""
    return await db.write(lambda d: _add_blocks(d, n))


@dataclass
class Env:
    """One coordinator state directory anchoring to a MicroblockAnchor on anvil."""

    node: AnvilNode
    root: Path
    wallet: FileWallet
    contract: str
    db: Database
    services: list[AnchoringService] = field(default_factory=list)

    def config(self, **chain: Any) -> CoordinatorConfig:
        settings = {"rpc_url": self.node.url, "contract": self.contract, **FAST_CHAIN, **chain}
        return parse_config({"state_dir": str(self.root), "chain": settings})

    async def service(self, **chain: Any) -> AnchoringService:
        """A connected service, as after a coordinator (re)start on this state."""
        svc = AnchoringService(self.config(**chain), Host(self.db))
        await svc.connect()
        self.services.append(svc)
        return svc

    def w3_contract(self) -> Any:
        w3 = self.node.web3()
        return w3.eth.contract(address=self.contract, abi=ABI)

    def anchored_roots(self) -> list[bytes]:
        logs = self.w3_contract().events.Anchored.get_logs(from_block=0)
        return [bytes(log["args"]["root"]) for log in logs]

    def rows(self, sql: str, args: list[Any] | None = None) -> list[dict[str, Any]]:
        return self.db.read_sync(lambda d: list(d.query(sql, args or [])))


@contextlib.asynccontextmanager
async def make_env(node: AnvilNode, root: Path) -> AsyncIterator[Env]:
    """A funded wallet that deployed its own contract (so it is owner and submitter)."""
    state = root / "state"
    wallet, _ = ensure_wallet_file(state / "anchor-wallet.key")
    fund(node, wallet.address)
    contract = Chain.connect(node.url, 10).deploy(wallet, cap_wei=200 * 10**9)
    db = Database(state / "coordinator.db")
    db.open()
    e = Env(node, state, wallet, contract, db)
    try:
        yield e
    finally:
        for svc in e.services:
            await svc.stop()
        db.close()


@pytest.fixture
async def anchor_env(anvil: AnvilNode, tmp_path: Path) -> AsyncIterator[Env]:  # noqa: F811
    async with make_env(anvil, tmp_path) as e:
        yield e


@pytest.fixture
async def stateful_env(anvil_bin: Path, tmp_path: Path) -> AsyncIterator[Env]:  # noqa: F811
    """Like ``anchor_env``, on a node that keeps its chain (not its mempool) across restarts."""
    node = AnvilNode(anvil_bin, workdir=tmp_path / "anvil", state_path=tmp_path / "anvil.json")
    node.start()
    try:
        async with make_env(node, tmp_path) as e:
            yield e
    finally:
        node.stop(graceful=False)


def fund(node: AnvilNode, address: str, ether: int = 10) -> None:
    w3 = node.web3()
    tx = w3.eth.send_transaction(
        {"from": node.accounts[0].address, "to": address, "value": ether * 10**18}
    )
    w3.eth.wait_for_transaction_receipt(tx, timeout=30)


async def drive(
    svc: AnchoringService,
    until: Callable[[], bool],
    *,
    node: AnvilNode | None = None,
    timeout: float = 20.0,
) -> None:
    """Tick the service (mining a block after each round if ``node``) until ``until()``."""
    deadline = time.monotonic() + timeout
    while not until():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached in {timeout} s: {await svc.status()}")
        await svc.tick()
        if node is not None:
            node.mine(1)
        await asyncio.sleep(0.02)


def all_final(anchor_env: Env) -> bool:
    rows = anchor_env.rows(
        "SELECT count(*) AS n FROM blocks b LEFT JOIN anchors a ON a.id = b.anchor_id "
        "WHERE a.state IS NOT 'final'"
    )
    return rows[0]["n"] == 0


def assert_exactly_once(db_rows: Callable[[str], list[dict[str, Any]]], roots: list[bytes]) -> None:
    """SPEC §7's promise: each root on chain once, every block under exactly one final root,
    and every root on chain is one of our final anchors (nothing stray, nothing lost)."""
    assert len(roots) == len(set(roots)), "a root was anchored twice"
    finals = db_rows("SELECT id, root, tree_size FROM anchors WHERE state='final' ORDER BY id")
    heights = [r["height"] for r in db_rows("SELECT height FROM blocks ORDER BY height")]
    covered: Counter[int] = Counter()
    for a in finals:
        leaves = db_rows(
            f"SELECT l.height, b.hash FROM anchor_leaves l JOIN blocks b ON b.height = l.height "
            f"WHERE l.anchor_id = {a['id']} ORDER BY l.leaf_index"
        )
        assert len(leaves) == a["tree_size"]
        assert merkle.root([bytes(r["hash"]) for r in leaves]) == bytes(a["root"])
        covered.update(r["height"] for r in leaves)
    assert covered == Counter(heights), "a block is not covered exactly once"
    assert sorted(roots) == sorted(bytes(a["root"]) for a in finals)


def sqlite_rows(path: Path) -> Callable[[str], list[dict[str, Any]]]:
    """Read a coordinator's database from outside (WAL lets us while it runs)."""

    def q(sql: str) -> list[dict[str, Any]]:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in conn.execute(sql)]
        finally:
            conn.close()

    return q


@contextlib.contextmanager
def miner(node: AnvilNode, interval: float = 0.2) -> Iterator[None]:
    """Mine an empty block every ``interval`` seconds, riding out node restarts."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(interval):
            with contextlib.suppress(Exception):
                node.rpc("evm_mine", timeout=2)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
