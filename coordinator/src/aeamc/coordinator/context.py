"""What every coordinator service shares: configuration, clock, storage, the live device
registry, the wake-up events of the background loops and the counters.

``Context`` holds state and the few helpers every service needs; it makes no decisions.
The tables are written only through the store layer (``store/``: one module per table
group), and the live device registry (``ctx.devices``, a ``store.registry.DeviceRegistry``)
changes only through its own methods, after the write it mirrors has committed.

The services (one module each: tokens, enrollment, heartbeats, flags, tasks, ingestion,
settlement, verdicts, blocks, privacy, devices, maintenance, status) are built on it by
the composition root, ``service.Coordinator``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from aeamc.shared.identity import Signer, device_id_for
from aeamc.shared.refusals import Fault, Refusal
from aeamc.shared.runtime.clock import now_ms
from aeamc.shared.runtime.tls import Peer
from aeamc.shared.runtime.waiting import wait_set
from aeamc.shared.tasks.registry import KindRegistry

from .alerts import AlertTracker
from .attached import RolloutsView, StatusSection
from .certs import DeviceCertificates
from .config import CoordinatorConfig, IpNetwork, endpoint_networks
from .groupcommit import GroupCommit
from .registry import Device
from .store.registry import DeviceRegistry
from .verifier import SignatureVerifier

log = logging.getLogger(__name__)


async def wait_event(event: asyncio.Event, timeout: float) -> None:
    """Wait until ``event`` is set or ``timeout`` passes, then clear it; cancellable at
    every moment (``runtime.waiting``)."""
    await wait_set(event, timeout)
    event.clear()


async def repeat(
    work: Callable[[], Awaitable[object]],
    wake: asyncio.Event,
    interval: float,
    what: str,
    logger: logging.Logger = log,
) -> None:
    """Run ``work`` until cancelled: now, then at every ``wake`` or after ``interval``
    seconds. A failing round is logged to ``logger`` ("<what> failed") and the next one
    runs, so one bad row never stops a background loop."""
    while True:
        try:
            await work()
        except Exception:
            logger.exception("%s failed", what)
        await wait_event(wake, interval)


class Context:
    """The state the coordinator's services share (see the module docstring)."""

    def __init__(
        self,
        config: CoordinatorConfig,
        signer: Signer,
        db: GroupCommit,
        kinds: KindRegistry,
        clock: Callable[[], int] = now_ms,
        *,
        certs: DeviceCertificates | None = None,
    ) -> None:
        self.config = config
        #: The CA's side of mutual TLS; None only for offline uses (``init``'s tokens).
        self.certs = certs
        self.signer = signer
        self.db = db
        self.kinds = kinds
        self.clock = clock
        self.coordinator_id = device_id_for(signer.public_key)
        #: Every enrolled device by id, as committed (changed only by its own methods).
        self.devices = DeviceRegistry()
        self.eps_config = config.eps.to_eps_config()
        #: Where device endpoints may be besides the enrolling address (enrollment.py).
        self.endpoint_networks: tuple[IpNetwork, ...] = endpoint_networks(config.enrollment)
        #: Set whenever something may let the scheduler make progress.
        self.wake_scheduler = asyncio.Event()
        #: The last scheduling round saw tasks that still need devices.
        self.work_waiting = True
        self.wake_blocks = asyncio.Event()
        self.wake_spot_checks = asyncio.Event()
        self.started_at = clock()
        self.counters: dict[str, int] = {}
        #: Receipts accepted but not yet in a block (a hint for forming full blocks early).
        self.unblocked = 0
        self._background: set[asyncio.Future[Any]] = set()
        #: Extra sections of the status summary by name (anchoring, updates), each computed
        #: by its owner, in the order they were added (``add_status_section``).
        self.status_sections: dict[str, StatusSection] = {}
        self.alert_tracker = AlertTracker()
        #: (time ms, status, seconds) of the latest requests, for alert evaluation.
        self.recent_requests: deque[tuple[int, int, float]] = deque(maxlen=10_000)
        #: Fleet updates (updates/rollouts.py), attached by the service that runs us.
        self.rollouts: RolloutsView | None = None
        #: Where heartbeat signatures are checked (a thread, once the service starts it).
        self.verifier = SignatureVerifier()
        self._build_services()

    def _build_services(self) -> None:
        """Where a subclass builds the services on this context (``service.Coordinator``);
        called last in ``__init__``, once the shared state exists."""

    def add_status_section(self, section: StatusSection) -> None:
        """Include ``section`` in the status summary, after those added before it."""
        self.status_sections[section.status_name] = section

    async def load_devices(self) -> None:
        """Fill the registry from the database, with the recent heartbeat times EPS needs."""
        await self.devices.load(self.db, self.clock() - self.eps_config.poa_window_ms)

    async def current_device(self, device_id: str) -> Device | None:
        """``device_id`` as committed now (registry.refresh): for a request the view alone
        would refuse, as another worker process may have enrolled, approved or released
        the device since this one last followed the database."""
        return await self.devices.refresh(
            self.db, device_id, self.clock() - self.eps_config.poa_window_ms
        )

    def tls(self) -> DeviceCertificates:
        """The CA's side of mutual TLS (refused when this coordinator has none)."""
        if self.certs is None:
            raise Refusal(
                Fault.UNAVAILABLE, "unavailable", "this coordinator has no certificate authority"
            )
        return self.certs

    def check_peer(self, peer: Peer | None, device_id: str, *, allow_revoked: bool = False) -> None:
        """The device request's TLS client certificate must be this device's (certs.py)."""
        self.tls().check(peer, device_id, allow_revoked=allow_revoked)

    def spawn(self, coro: Any) -> None:
        """Run ``coro`` in the background, keeping a reference so it is not collected."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the in-process counter ``name`` (exported by metrics.py)."""
        self.counters[name] = self.counters.get(name, 0) + n
