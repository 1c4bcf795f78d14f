"""The anchoring service: one sender that moves anchors through their lifecycle.

Every ``chain.poll_s`` it looks at the chain once for the anchor in flight and carries out
what :func:`aeamc.shared.anchoring.decide` says (``confirmer``); every
``chain.anchor_interval_s``, when no anchor is in flight, it anchors the Merkle root of
every block hash not yet anchored, in chain order, in one ``anchor(root)`` transaction
(``sender``). Connecting and reconciling with the chain is ``connection``'s; the status
view is ``status``'s; blocking chain work runs on one thread (``calls``).

Every HTTP request has a timeout; each failed round counts as one RPC error and the round
is simply tried again at the next poll: nothing is decided on a partial view of the chain.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from aeamc.shared.anchoring import Action, State, mine_for_confirmations, not_ready_retry_s

from ..attached import ANCHORING
from . import store
from .calls import ChainCalls
from .confirmer import advance
from .connection import NotReady, connect
from .sender import Sender
from .session import Session, policy_for
from .status import ChainStatus, anchoring_status
from .store import Target

if TYPE_CHECKING:
    from ..config import CoordinatorConfig
    from ..service import Coordinator
    from .chain import Chain

log = logging.getLogger(__name__)


class AnchoringService:
    """The single sender: one background loop, one chain thread, one anchor in flight.

    Its ``status`` is the ``anchoring`` section of the coordinator's status summary (a
    ``StatusSection``, attached by the process that runs both).
    """

    status_name = ANCHORING

    def __init__(self, config: CoordinatorConfig, coordinator: Coordinator) -> None:
        self.config = config
        self.cc = config.chain
        self.db = coordinator.db
        self.clock = coordinator.clock
        self.policy = policy_for(self.cc)
        self.status_info = ChainStatus(state="starting" if self.cc.enabled else "disabled")
        #: Set once connected; the chain, wallet and target below are its.
        self.session: Session | None = None
        self.sender = Sender(self.cc.anchor_interval_s)
        self._calls = ChainCalls(self.cc.rpc_timeout_s)
        self._task: asyncio.Task[None] | None = None

    @property
    def chain(self) -> Chain | None:
        """The chain anchored on, once connected."""
        return self.session.chain if self.session is not None else None

    @property
    def target(self) -> Target | None:
        """Where anchors go (chain, contract, sender), once connected."""
        return self.session.target if self.session is not None else None

    # -- life cycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the background loop; connecting happens there, so start-up never waits."""
        if not self.cc.enabled:
            log.info("anchoring is disabled (chain.enabled = false)")
            return
        self._task = asyncio.create_task(self.run(), name="anchoring")

    async def stop(self) -> None:
        """End the loop and the chain thread; whatever was in flight resumes at next start."""
        task, self._task = self._task, None
        # On Python 3.11 asyncio.wait_for can swallow a cancel() that races with the
        # awaited call finishing (CPython gh-86296): cancel until the task has ended.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        if task is not None and not task.cancelled() and task.exception() is not None:
            log.error("the anchoring loop had failed: %s", task.exception())
        self._calls.close()  # a call in flight ends within its HTTP timeout

    async def run(self) -> None:
        """Connect, then one round per poll until cancelled; a failed round is counted and
        tried again, a configuration problem retried less and less often."""
        retry_s = self.cc.poll_s
        while True:
            try:
                if self.session is None:
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
                retry_s = not_ready_retry_s(retry_s, self.cc.poll_s)
            except Exception as exc:
                self._fail(f"{type(exc).__name__}: {exc}", rpc=True)
            await asyncio.sleep(retry_s)

    async def connect(self) -> None:
        """Reach the chain, load the wallet and contract, and reconcile what is stored."""
        self.session = await connect(
            self.config,
            self.db,
            clock=self.clock,
            calls=self._calls,
            status=self.status_info,
            policy=self.policy,
        )

    # -- one round --------------------------------------------------------------------------

    async def tick(self) -> Action | None:
        """One round: refresh head and balance, advance the anchor in flight, or start one.

        Returns the action taken on the anchor in flight, ``None`` when there was none.
        """
        s = self._ready()
        now = self.clock()
        live = await self.db.read(lambda db: store.live_anchor(db, s.target))
        chain, wallet = s.chain, s.wallet
        mine = mine_for_confirmations(
            chain.embedded, State(live["state"]) if live is not None else None
        )

        def refresh() -> tuple[int, int]:
            if mine:
                chain.mine(1)
            return chain.head(), chain.balance(wallet.address)

        self.status_info.head, balance = await s.call(refresh)
        self.status_info.observe_balance(now, balance)
        self.status_info.state = "running"
        if live is not None:
            return await advance(s, live, now)
        await self.sender.round(s, now)
        return None

    async def status(self) -> dict[str, Any]:
        """Anchoring at a glance, from stored data and the last round (no chain calls)."""
        chain = self.chain
        return await anchoring_status(
            self.db,
            self.cc,
            self.status_info,
            self.clock,
            rpc_label=chain.label if chain else None,
            target=self.target,
        )

    # -- helpers ----------------------------------------------------------------------------

    async def _any_block(self) -> bool:
        return bool(
            await self.db.read(
                lambda db: next(iter(db.query("SELECT 1 FROM blocks LIMIT 1")), None)
            )
        )

    def _ready(self) -> Session:
        if self.session is None:
            raise NotReady("not connected to a chain yet")
        return self.session

    def _fail(self, message: str, *, rpc: bool) -> None:
        self.status_info.fail(message, rpc=rpc, connected=self.session is not None)


__all__ = ["AnchoringService", "NotReady"]
