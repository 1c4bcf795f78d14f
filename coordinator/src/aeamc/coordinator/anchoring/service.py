"""The anchoring service: one sender that moves anchors through their lifecycle.

Every ``chain.poll_s`` it looks at the chain once for the anchor in flight and carries out
what :func:`aeamc.shared.anchoring.decide` says; every ``chain.anchor_interval_s``, when
no anchor is in flight, it anchors the Merkle root of every block hash not yet anchored,
in chain order, in one ``anchor(root)`` transaction.

web3 is synchronous here on purpose: the embedded chain (eth-tester/py-evm) only exists
as a synchronous, not thread-safe provider, and the command line shares the same client.
All chain work runs on one dedicated thread — so it never blocks the event loop, and one
thread is also what makes "one sender, one nonce sequence" hold by construction. Every
HTTP request has a timeout; each failed round counts as one RPC error and the round is
simply tried again at the next poll: nothing is decided on a partial view of the chain.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from aeamc.shared import merkle
from aeamc.shared.anchoring import (
    Action,
    Adopt,
    Broadcast,
    Finalize,
    Include,
    Policy,
    Receipt,
    Replace,
    Requeue,
    Seen,
    State,
    Wait,
    YieldTo,
    decide,
    fees_for_new_anchor,
    plan_nonce,
)

from . import store
from .store import Target
from .wallet import TxSigner, WalletError, ensure_wallet

if TYPE_CHECKING:
    from ..config import CoordinatorConfig
    from ..service import Coordinator
    from .chain import Chain

log = logging.getLogger(__name__)
T = TypeVar("T")
GWEI = 10**9
EMBEDDED_NOTE = (
    "embedded in-process chain, started with the first microblock: anchors only prove "
    "something inside this process and are lost when the coordinator stops; set "
    "chain.rpc_url to anchor on a real chain"
)


class NotReady(Exception):
    """Anchoring cannot run as configured yet (no contract, wrong chain); not transient."""


@dataclass
class ChainStatus:
    """What the last round learnt; served by ``/v1/status`` without touching the chain."""

    state: str = "starting"
    chain_id: int | None = None
    contract: str | None = None
    wallet: str | None = None
    balance_wei: int | None = None
    head: int | None = None
    submitter: bool | None = None
    rpc_errors: int = 0
    last_error: str | None = None
    last_action: str | None = None
    counters: dict[str, int] = field(default_factory=dict)


class ChainThread:
    """The one thread that does blocking chain work, in submission order.

    A daemon thread: process exit never waits for a slow RPC call. Abandoning a call
    midway is no worse than a crash, which the lifecycle recovers from by design.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None] = (
            queue.SimpleQueue()
        )
        self._thread = threading.Thread(target=self._run, name="chain", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((future, fn))
        return future

    def close(self) -> None:
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            future, fn = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the awaiting coroutine
                future.set_exception(exc)


class AnchoringService:
    """The single sender: one background loop, one chain thread, one anchor in flight."""

    def __init__(self, config: CoordinatorConfig, coordinator: Coordinator) -> None:
        self.config = config
        self.cc = config.chain
        self.db = coordinator.db
        self.clock = coordinator.clock
        self.policy = Policy(
            confirmations=self.cc.confirmations,
            stuck_after_ms=int(self.cc.stuck_after_s * 1000),
            rebroadcast_after_ms=int(max(self.cc.poll_s * 5, 0.5) * 1000),
            max_fee_per_gas=int(self.cc.max_fee_gwei * GWEI),
        )
        self.status_info = ChainStatus(state="starting" if self.cc.enabled else "disabled")
        self.chain: Chain | None = None
        self.wallet: TxSigner | None = None
        self.target: Target | None = None
        self._thread: ChainThread | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_created_ms: int | None = None
        hooks = getattr(coordinator, "status_hooks", None)
        if hooks is not None:
            hooks["anchoring"] = self.status

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background loop; connecting happens there, so start-up never waits."""
        if not self.cc.enabled:
            log.info("anchoring is disabled (chain.enabled = false)")
            return
        self._task = asyncio.create_task(self.run(), name="anchoring")

    async def stop(self) -> None:
        task, self._task = self._task, None
        # On Python 3.11 asyncio.wait_for can swallow a cancel() that races with the
        # awaited call finishing (CPython gh-86296): cancel until the task has ended.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("the anchoring loop had failed: %s", task.exception())
        if self._thread is not None:
            self._thread.close()  # a call in flight ends within its HTTP timeout
            self._thread = None

    async def run(self) -> None:
        retry_s = self.cc.poll_s
        while True:
            try:
                if self.target is None:
                    if not self.cc.rpc_url and not await self._any_block():
                        # An idle coordinator never pays for the in-process chain.
                        self.status_info.state = "idle"
                        await asyncio.sleep(self.cc.poll_s)
                        continue
                    await self.connect()
                    retry_s = self.cc.poll_s
                await self.tick()
            except asyncio.CancelledError:
                raise
            except NotReady as exc:
                self._fail(str(exc), rpc=False)
                retry_s = min(max(retry_s * 2, self.cc.poll_s), 60.0)
            except Exception as exc:
                self._fail(f"{type(exc).__name__}: {exc}", rpc=True)
            await asyncio.sleep(retry_s)

    # -- connecting -------------------------------------------------------------------------

    async def _any_block(self) -> bool:
        return bool(
            await self.db.read(
                lambda db: next(iter(db.query("SELECT 1 FROM blocks LIMIT 1")), None)
            )
        )

    async def connect(self) -> None:
        """Reach the chain, load the wallet and contract, and reconcile what is stored."""
        chain, wallet = await self._call(
            self._connect_sync, timeout=max(60.0, self.cc.rpc_timeout_s)
        )
        target = Target(chain.chain_id(), chain.address, chain.embedded, wallet.address)
        now = self.clock()
        released = await self.db.write(lambda db: store.release_foreign(db, target, now))
        if released:
            log.warning("%d microblocks will be anchored again on %s", released, chain.label)
        stored = await self.db.read(lambda db: store.stored_next_nonce(db, target))
        latest, pending = await self._call(
            lambda: (chain.tx_count(wallet.address), chain.tx_count(wallet.address, "pending"))
        )
        if stored is not None and stored != pending:
            # The chain is the truth; the stored anchors carry their own nonces.
            log.warning(
                "stored next nonce %d, chain says %d (latest %d): reconciled with the chain",
                stored,
                pending,
                latest,
            )
        self.chain, self.wallet, self.target = chain, wallet, target
        s = self.status_info
        s.state, s.chain_id, s.contract, s.wallet = (
            "running",
            target.chain_id,
            chain.address,
            wallet.address,
        )
        if chain.embedded:
            log.warning(
                "%s (chain id %d, contract %s)", EMBEDDED_NOTE, target.chain_id, chain.address
            )
        else:
            log.info(
                "anchoring on %s, chain id %d, contract %s, wallet %s, %d confirmations",
                chain.label,
                target.chain_id,
                chain.address,
                wallet.address,
                self.cc.confirmations,
            )

    def _connect_sync(self) -> tuple[Chain, TxSigner]:
        from .chain import Chain, ChainError

        try:
            wallet, created = ensure_wallet(self.config.wallet_ref)
        except WalletError as exc:
            raise NotReady(str(exc)) from None
        if created:
            log.info("created anchoring wallet %s", wallet.address)
        if not self.cc.rpc_url:
            chain = Chain.start_embedded()
            chain.fund(wallet.address)
            chain.deploy(wallet, cap_wei=self.policy.max_fee_per_gas)
            self.status_info.submitter = True
            return chain, wallet
        chain = Chain.connect(self.cc.rpc_url, self.cc.rpc_timeout_s)
        chain_id = chain.chain_id()
        if self.cc.chain_id and chain_id != self.cc.chain_id:
            raise NotReady(
                f"{chain.label} is chain {chain_id}, chain.chain_id says {self.cc.chain_id}"
            )
        if not self.cc.contract:
            raise NotReady("chain.contract is not set: run `aeamc-coordinator chain deploy`")
        if not chain.has_code(self.cc.contract):
            raise NotReady(f"no contract at {self.cc.contract} on chain {chain_id}")
        chain.bind(self.cc.contract)
        try:
            self.status_info.submitter = chain.is_submitter(wallet.address)
        except (ChainError, ValueError):
            self.status_info.submitter = None
        if self.status_info.submitter is False:
            log.error("wallet %s is not a submitter of %s", wallet.address, self.cc.contract)
        return chain, wallet

    # -- one round --------------------------------------------------------------------------

    async def tick(self) -> Action | None:
        """One round: refresh head and balance, advance the anchor in flight, or start one."""
        chain, wallet, target = self._ready()
        now = self.clock()
        live = await self.db.read(lambda db: store.live_anchor(db, target))
        # The in-process chain only mines on transactions: an empty block per round gives
        # an included anchor its confirmations, and nothing grows while nothing waits.
        mine = chain.embedded and live is not None and live["state"] == "included"

        def refresh() -> tuple[int, int]:
            if mine:
                chain.mine(1)
            return chain.head(), chain.balance(wallet.address)

        self.status_info.head, self.status_info.balance_wei = await self._call(refresh)
        self.status_info.state = "running"
        action: Action | None = None
        if live is not None:
            action = await self._advance(live, now)
        else:
            # Blocks a reorg gave back were anchored once already: no waiting for the
            # interval, and a reorged transaction mined after all is found at once.
            reorged = await self.db.read(lambda db: store.unresolved_reorged(db, target))
            interval_ms = int(self.cc.anchor_interval_s * 1000)
            due = self._last_created_ms is None or now - self._last_created_ms >= interval_ms
            if due or reorged:
                await self._start_anchor(now, reorged)
        return action

    async def _advance(self, row: dict[str, Any], now: int) -> Action:
        chain, wallet, target = self._ready()
        anchor_id = row["id"]
        txs = await self.db.read(lambda db: store.anchor_txs(db, anchor_id))
        siblings = (
            await self.db.read(lambda db: store.sibling_txs(db, target, row["nonce"], anchor_id))
            if row["nonce"] is not None
            else []
        )
        t = store.tracked(row, txs)
        hashes = list(t.tx_hashes)
        if row["tx_hash"] not in hashes:
            hashes.append(row["tx_hash"])  # adopted: the included transaction is not ours
        seen = await self._call(
            functools.partial(
                observe,
                chain,
                sender=wallet.address,
                root=bytes(row["root"]),
                nonce=row["nonce"],
                hashes=hashes,
                current=t.tx_hashes[-1] if t.tx_hashes else None,
                included_at=row["block_number"],
                siblings=[s["tx_hash"] for s in siblings],
                confirmations=self.cc.confirmations,
                market=(self._priority_wei(), self.policy.max_fee_per_gas)
                if row["state"] == "sent"
                else None,
            )
        )
        action = decide(t, seen, now, self.policy)
        await self._apply(row, txs, action, now)
        return action

    async def _apply(
        self, row: dict[str, Any], txs: list[dict[str, Any]], action: Action, now: int
    ) -> None:
        chain, wallet, _ = self._ready()
        anchor_id = row["id"]
        self.status_info.last_action = (
            f"anchor {anchor_id}: {type(action).__name__}: {action.reason}"
        )
        if isinstance(action, Wait):
            log.debug("anchor %d: %s", anchor_id, action.reason)
        elif isinstance(action, Broadcast):
            await self._broadcast(anchor_id, bytes(txs[-1]["raw"]), action.reason)
        elif isinstance(action, Replace):
            last = txs[-1]
            signed = await self._call(
                lambda: wallet.sign_transaction(
                    chain.anchor_tx(
                        bytes(row["root"]), row["nonce"], action.fees, last["gas_limit"]
                    )
                )
            )
            await self.db.write(
                lambda db: store.add_replacement(
                    db,
                    anchor_id,
                    nonce=row["nonce"],
                    fees=action.fees,
                    gas=last["gas_limit"],
                    signed=signed,
                    now=now,
                )
            )
            self._count("replacements")
            log.warning(
                "anchor %d: %s; replaced by %s at nonce %d with max fee %d, tip %d wei",
                anchor_id,
                action.reason,
                signed.tx_hash,
                row["nonce"],
                action.fees.max_fee_per_gas,
                action.fees.max_priority_fee_per_gas,
            )
            await self._broadcast(anchor_id, signed.raw, "replacement")
        elif isinstance(action, Include):
            await self._include(anchor_id, action.receipt, action.reason, now)
        elif isinstance(action, Finalize):
            await self.db.write(lambda db: store.mark_final(db, anchor_id, now, action.reason))
            self._count("final")
            log.info(
                "anchor %d final: root %s over %d microblocks, tx %s in block %s, gas used %s",
                anchor_id,
                bytes(row["root"]).hex(),
                row["tree_size"],
                row["tx_hash"],
                row["block_number"],
                row["gas_used"],
            )
        elif isinstance(action, Adopt):
            await self._adopt(row, action.block_number, now)
        elif isinstance(action, YieldTo):
            await self._yield(anchor_id, action.receipt, now)
        elif isinstance(action, Requeue):
            n = await self.db.write(
                lambda db: store.requeue(db, anchor_id, action.state, action.reason)
            )
            self._count(str(action.state))
            log.warning(
                "anchor %d %s: %s; %d microblocks go back to the queue",
                anchor_id,
                action.state,
                action.reason,
                n,
            )

    async def _broadcast(self, anchor_id: int, raw: bytes, reason: str) -> None:
        chain, _, _ = self._ready()
        ok, message = await self._call(lambda: chain.send_raw(raw))
        if ok:
            now = self.clock()
            await self.db.write(lambda db: store.mark_broadcast(db, anchor_id, now))
            self._count("broadcasts")
            log.info("anchor %d: transaction sent (%s)", anchor_id, reason)
        else:
            # Not an error of ours: the next look at the chain tells what it means.
            self._count("refused_broadcasts")
            self.status_info.last_error = f"node refused anchor {anchor_id}: {message}"
            log.warning("anchor %d: the node refused the transaction: %s", anchor_id, message)

    async def _include(self, anchor_id: int, receipt: Receipt, reason: str, now: int) -> None:
        await self.db.write(lambda db: store.mark_included(db, anchor_id, receipt, now, reason))
        log.info(
            "anchor %d included: %s in block %d, gas used %d (%s)",
            anchor_id,
            receipt.tx_hash,
            receipt.block_number,
            receipt.gas_used,
            reason,
        )

    async def _lookup(self, root: bytes, block_number: int) -> Receipt | None:
        """The receipt of whichever transaction anchored ``root`` in ``block_number``."""
        chain, _, _ = self._ready()

        def find() -> Receipt | None:
            event = chain.anchored_event(root, block_number)
            return None if event is None else chain.receipt(event.tx_hash)

        return await self._call(find)

    async def _adopt(self, row: dict[str, Any], block_number: int, now: int) -> None:
        receipt = await self._lookup(bytes(row["root"]), block_number)
        if receipt is None:
            log.warning(
                "anchor %d: root anchored in block %d but no event found", row["id"], block_number
            )
            return
        self._count("adopted")
        await self._include(row["id"], receipt, "root already anchored; adopted", now)

    async def _yield(self, anchor_id: int, receipt: Receipt, now: int) -> None:
        winner = await self.db.read(lambda db: store.anchor_of_tx(db, receipt.tx_hash))
        if winner is None:
            return

        def txn(db: Any) -> None:
            store.requeue(db, anchor_id, State.DROPPED, f"anchor {winner} was mined at this nonce")
            store.revive(db, winner, receipt, now, "mined after its reorg; revived")

        await self.db.write(txn)
        self._count("revived")
        log.warning("anchor %d was mined after all; anchor %d dropped", winner, anchor_id)

    async def _start_anchor(self, now: int, reorged: list[dict[str, Any]]) -> None:
        chain, wallet, target = self._ready()
        blocks = await self.db.read(store.unanchored_blocks)
        if not blocks:
            return
        confirmations = self.cc.confirmations

        def counts() -> tuple[int, int, int]:
            head = chain.head()
            return (
                chain.tx_count(wallet.address),
                chain.tx_count(wallet.address, "pending"),
                chain.tx_count(wallet.address, max(head - confirmations, 0)),
            )

        latest, pending, final = await self._call(counts)
        plan = plan_nonce(latest, pending, final, [r["nonce"] for r in reorged])
        for r in reorged:
            if r["nonce"] in plan.check and await self._revive_if_mined(r, now):
                return
        if plan.nonce is None:
            log.info("not anchoring yet: %s", plan.reason)
            return
        heights = [h for h, _ in blocks]
        root = merkle.root([block_hash for _, block_hash in blocks])
        self._last_created_ms = now
        anchored, _, block_number = await self._call(lambda: chain.verify_anchor(root))
        if anchored:
            # Never send a root twice: the contract would revert AlreadyAnchored.
            receipt = await self._lookup(root, block_number)
            if receipt is not None:
                anchor_id = await self.db.write(
                    lambda db: store.create_adopted(
                        db, target, root=root, heights=heights, receipt=receipt, now=now
                    )
                )
                self._count("adopted")
                log.warning(
                    "root %s is already on chain: adopted as anchor %d", root.hex(), anchor_id
                )
            return
        from .chain import AnchorRefused

        try:
            gas = await self._call(lambda: chain.preflight(root, wallet.address))
        except AnchorRefused as exc:
            self._fail(str(exc), rpc=False)
            self.status_info.state = "refused"
            return
        contested = next((r["fees"] for r in reorged if r["nonce"] == plan.nonce), None)
        market = await self._call(
            lambda: chain.market_fees(self._priority_wei(), self.policy.max_fee_per_gas)
        )
        fees = fees_for_new_anchor(market, self.policy.max_fee_per_gas, contested)
        nonce = plan.nonce
        signed = await self._call(
            lambda: wallet.sign_transaction(chain.anchor_tx(root, nonce, fees, gas))
        )
        anchor_id = await self.db.write(
            lambda db: store.create_intent(
                db,
                target,
                root=root,
                heights=heights,
                nonce=nonce,
                fees=fees,
                gas=gas,
                signed=signed,
                now=now,
            )
        )
        self._count("anchors")
        log.info(
            "anchor %d: root %s over microblocks %d..%d (%d), nonce %d, %s",
            anchor_id,
            root.hex(),
            heights[0],
            heights[-1],
            len(heights),
            nonce,
            plan.reason,
        )
        await self._broadcast(anchor_id, signed.raw, "new anchor")

    async def _revive_if_mined(self, reorged: dict[str, Any], now: int) -> bool:
        chain, _, _ = self._ready()

        def find() -> Receipt | None:
            for tx_hash in reorged["tx_hashes"]:
                r = chain.receipt(tx_hash)
                if (
                    r is not None
                    and r.status == 1
                    and chain.block_hash(r.block_number) == r.block_hash
                ):
                    return r
            return None

        receipt = await self._call(find)
        if receipt is None:
            return False
        await self.db.write(
            lambda db: store.revive(
                db, reorged["id"], receipt, now, "mined after its reorg; revived"
            )
        )
        self._count("revived")
        log.warning("reorged anchor %d was mined after all: revived", reorged["id"])
        return True

    # -- status -----------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        """Anchoring at a glance, from stored data and the last round (no chain calls)."""
        target = self.target
        counts = await self.db.read(lambda db: store.summary(db, target))
        s = self.status_info
        last = counts.pop("last_final_anchor", None)
        age = None
        if last is not None and last["final_at"] is not None:
            age = max(0, (self.clock() - last["final_at"]) // 1000)
        out: dict[str, Any] = {
            "enabled": self.cc.enabled,
            "state": s.state,
            "embedded": not self.cc.rpc_url,
            "rpc": self.chain.label if self.chain else None,
            "chain_id": s.chain_id,
            "contract": s.contract,
            "wallet": s.wallet,
            "wallet_submitter": s.submitter,
            "balance_wei": s.balance_wei,
            "head": s.head,
            "confirmations": self.cc.confirmations,
            "anchor_interval_s": self.cc.anchor_interval_s,
            "last_final_anchor": last,
            "last_final_anchor_age_s": age,
            "rpc_errors": s.rpc_errors,
            "last_error": s.last_error,
            "last_action": s.last_action,
            "counters": dict(s.counters),
            **counts,
        }
        if out["embedded"]:
            out["note"] = EMBEDDED_NOTE
        return out

    # -- helpers ----------------------------------------------------------------------------

    def _ready(self) -> tuple[Chain, TxSigner, Target]:
        if self.chain is None or self.wallet is None or self.target is None:
            raise NotReady("not connected to a chain yet")
        return self.chain, self.wallet, self.target

    def _priority_wei(self) -> int:
        return int(self.cc.priority_fee_gwei * GWEI)

    def _count(self, name: str) -> None:
        self.status_info.counters[name] = self.status_info.counters.get(name, 0) + 1

    def _fail(self, message: str, *, rpc: bool) -> None:
        s = self.status_info
        if rpc:
            s.rpc_errors += 1
        if message != s.last_error:
            log.warning("anchoring: %s", message)
        s.last_error = message
        if self.target is None:
            s.state = "error" if not rpc else "unreachable"
        elif rpc:
            s.state = "rpc_errors"

    async def _call(self, fn: Callable[[], T], *, timeout: float | None = None) -> T:
        """Run blocking chain work on the chain thread, bounded in time."""
        if self._thread is None:
            self._thread = ChainThread()
        limit = timeout if timeout is not None else self.cc.rpc_timeout_s * 4
        return await asyncio.wait_for(asyncio.wrap_future(self._thread.submit(fn)), timeout=limit)


def observe(
    chain: Chain,
    *,
    sender: str,
    root: bytes,
    nonce: int | None,
    hashes: list[str],
    current: str | None,
    included_at: int | None,
    siblings: list[str],
    confirmations: int,
    market: tuple[int, int] | None,
) -> Seen:
    """Everything :func:`decide` needs about one anchor, in one pass over the chain.

    The order does not matter for safety: a nonce counts as taken by someone else only
    once that is final, and a receipt only counts when its block is canonical.
    """
    head = chain.head()
    nonce_used = nonce_used_final = False
    if nonce is not None:
        nonce_used = chain.tx_count(sender) > nonce
        if nonce_used:
            nonce_used_final = chain.tx_count(sender, max(head - confirmations, 0)) > nonce
    receipt = None
    for tx_hash in reversed(hashes):
        receipt = chain.receipt(tx_hash)
        if receipt is not None:
            break
    canonical = receipt is None or chain.block_hash(receipt.block_number) == receipt.block_hash
    included_hash_now = chain.block_hash(included_at) if included_at is not None else None
    anchored, _, block_number = chain.verify_anchor(root)
    sibling = None
    for tx_hash in siblings:
        r = chain.receipt(tx_hash)
        if r is not None and r.status == 1 and chain.block_hash(r.block_number) == r.block_hash:
            sibling = r
            break
    return Seen(
        head=head,
        receipt=receipt,
        receipt_canonical=canonical,
        included_hash_now=included_hash_now,
        root_anchored_block=block_number if anchored else None,
        nonce_used=nonce_used,
        nonce_used_final=nonce_used_final,
        known=chain.knows(current) if current is not None and receipt is None else True,
        sibling_receipt=sibling,
        market=None if market is None else chain.market_fees(*market),
    )


__all__ = ["AnchoringService", "ChainThread", "observe"]
