"""The agent daemon: wires the pieces together and runs them on one asyncio loop.

================  =========================================================================
monitor           reads telemetry, keeps the energy policy (monitor.py, energy.py)
link              enrollment and heartbeats (link.py)
locator           where the coordinator is: configured URL or mDNS (locator.py)
server            assignments, challenges, health (server.py)
queue             accepted assignments, durable until their proof is queued (workqueue.py)
runner            runs the queue in order, chunk by chunk in a worker process (runner.py)
sender            delivers the durable outbox of proofs (sender.py, outbox.py)
mdns              advertises ``_aeamc-agent._tcp`` and browses ``_aeamc-coord._tcp``
================  =========================================================================

Shutdown (SIGTERM/SIGINT): refuse new work with ``shutting_down``, let the chunk in flight
finish within the grace period, withdraw the mDNS advert, stop the server; the queue,
outbox and traces stay on disk for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web

from aeamc.shared.discovery import (
    AGENT_SERVICE_TYPE,
    COORDINATOR_SERVICE_TYPE,
    AgentAdvert,
    kinds_that_fit,
)
from aeamc.shared.errors import ProtocolError
from aeamc.shared.messages import Assignment, Capabilities
from aeamc.shared.runtime.edge import EdgeLimits
from aeamc.shared.runtime.services import ServiceEvent
from aeamc.shared.runtime.systemd import notify as notify_systemd
from aeamc.shared.tasks.registry import discover

from . import __version__
from .backoff import Backoff
from .client import CoordinatorClient
from .config import AgentConfig
from .keystore import load_identity
from .launcher import LAUNCHER_ENV
from .link import ACTIVE, CoordinatorLink, longest_heartbeat_gap_s
from .locator import CoordinatorLocator
from .metrics import AgentMetrics
from .monitor import EnergyMonitor
from .net import client_session, heartbeat_keepalive_s, start_server
from .outbox import Outbox
from .runner import Outcome, TaskRunner
from .sender import OutboxSender
from .server import ApiError, Refused, make_app
from .state import (
    ABANDONED_DIR,
    OUTBOX_DIR,
    QUEUE_DIR,
    REJECTED_DIR,
    TRACES_DIR,
    CoordinatorPin,
    SeqCounter,
    ensure_dir,
    write_status,
)
from .status import daemon_status
from .telemetry import TelemetrySource, make_source
from .tls import AgentTls
from .traces import TraceStore
from .worker import ChunkPool
from .workqueue import WorkQueue

if TYPE_CHECKING:  # zeroconf only with mDNS on (_start_mdns)
    from aeamc.shared.runtime.mdns import Mdns

log = logging.getLogger(__name__)

#: How often the status file is refreshed and old traces pruned.
HOUSEKEEPING_S = 5.0
#: Changes within this long share one write of the status file.
STATUS_COALESCE_S = 0.05
PRUNE_EVERY_S = 600.0


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        env: Mapping[str, str] = os.environ,
        source: TelemetrySource | None = None,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        """Load identity and state; raises on anything that makes running pointless."""
        self.config = config
        self.clock_ms = clock_ms
        state = ensure_dir(config.state_dir)
        self.key = load_identity(state, config.identity_key)
        self.device_id = self.key.device_id
        self.registry = discover()
        self.source = source or make_source(
            config.telemetry_source, config.telemetry_profile, env=env
        )
        self.monitor = EnergyMonitor(
            self.source, config.energy, interval_s=config.telemetry_interval_s
        )
        self.outbox = Outbox(
            state / OUTBOX_DIR,
            state / REJECTED_DIR,
            max_count=config.outbox_max_count,
            max_bytes=config.outbox_max_bytes,
        )
        self.traces = TraceStore(
            state / TRACES_DIR, retention_ms=int(config.trace_retention_s * 1000)
        )
        self.queue = WorkQueue(state / QUEUE_DIR, state / ABANDONED_DIR)
        self.seq = SeqCounter(state)
        pin = CoordinatorPin.load(state)
        self.tls = AgentTls(
            state,
            self.device_id,
            coordinator_id=pin.coordinator_id if pin else None,
            expected_ca=config.coordinator_ca_fingerprint,
        )
        self.locator = CoordinatorLocator(
            config.coordinator_url,
            pin.coordinator_id if pin else None,
            expected_ca=config.coordinator_ca_fingerprint,
        )
        self.pool = ChunkPool()
        self.shutting_down = False
        self.started_ms = clock_ms()
        self.metrics = AgentMetrics()
        self.port: int | None = None
        self.link: CoordinatorLink | None = None
        self.runner: TaskRunner | None = None
        self.sender: OutboxSender | None = None
        self.mdns: Mdns | None = None
        self.advert_name: str | None = None
        self._http: web.AppRunner | None = None
        self._session: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = asyncio.Event()
        #: Fleet updates (updater.py): only under the launcher, which can switch releases.
        self.updater: Any = None
        self.update_hold = False
        self.exit_code = 0
        self._stop_requested = asyncio.Event()
        self._status_due: asyncio.TimerHandle | None = None
        if config.is_demo_cheater:
            log.warning(
                "DEMO CHEATER: this agent fakes %.0f%% of chunk outputs without computing "
                "them; it exists to show spot-checks catching a cheater",
                config.cheat_fraction * 100,
            )

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        c = self.config
        gap_s = longest_heartbeat_gap_s(c.heartbeat_interval_s, c.heartbeat_jitter)
        self._session = client_session(
            timeout_s=c.request_timeout_s, keepalive_s=heartbeat_keepalive_s(gap_s)
        )
        client = CoordinatorClient(self._session, tls=self.tls)
        self.monitor.poll()
        self.link = CoordinatorLink(
            config=c,
            key=self.key,
            client=client,
            locator=self.locator,
            monitor=self.monitor,
            seq=self.seq,
            capabilities=self.capabilities,
            clock_ms=self.clock_ms,
            on_change=self._link_changed,
            has_work=self._has_work,
            on_heartbeat=self._count(self.metrics.heartbeats),
            tls=self.tls,
        )
        self.runner = TaskRunner(
            signer=self.key,
            device_id=self.device_id,
            pool=self.pool,
            monitor=self.monitor,
            traces=self.traces,
            outbox=self.outbox,
            queue=self.queue,
            clock_ms=self.clock_ms,
            known_kind=self._known_kind,
            hold=self._hold,
            cheat_fraction=c.cheat_fraction,
            on_change=self._task_changed,
            on_outcome=self._count_outcome,
        )
        self.sender = OutboxSender(
            outbox=self.outbox,
            client=client,
            locator=self.locator,
            signer=self.key,
            clock_ms=self.clock_ms,
            backoff=Backoff(c.retry_initial_s, c.retry_max_s),
            on_change=self.status_changed,
            on_latency=self._latency,
            on_result=self._count(self.metrics.deliveries),
        )
        if c.updates_enabled and os.environ.get(LAUNCHER_ENV):
            self.updater = self._make_updater(client)
        self._http, self.port = await start_server(
            make_app(self),
            c.listen_host,
            c.listen_port,
            ssl_context=self.tls.server_ssl,
            limits=EdgeLimits(c.listen_header_timeout_s, c.listen_max_connections_per_address),
            keepalive_timeout_s=c.listen_keepalive_timeout_s,
        )
        log.info(
            "agent %s listening on %s:%d (telemetry: %s)",
            self.device_id,
            c.listen_host,
            self.port,
            self.source.name,
        )
        if c.mdns_enabled:
            # Probing and announcing take a second or two; nothing needs to wait for them.
            self._spawn(self._start_mdns(), "mdns")
        self._spawn(self.link.run(), "link")
        self._spawn(self.sender.run(), "sender")
        self._spawn(self.monitor.run(), "monitor")
        self._spawn(self._housekeeping(), "housekeeping")
        if self.updater is not None:
            self._spawn(self.updater.run(), "updater")
        if self.queue.count:
            log.info("%d accepted assignments waiting from before the restart", self.queue.count)
        self.runner.start()
        self.write_status()
        notify_systemd("READY=1")

    async def stop(self) -> None:
        """Graceful shutdown; the outbox and traces stay for the next start."""
        if self._stopped.is_set():
            return
        self.shutting_down = True
        notify_systemd("STOPPING=1")
        log.info("shutting down: taking no new work")
        if self.runner is not None:
            await self.runner.stop(self.config.shutdown_grace_s)
        else:
            await self.pool.close(0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.mdns is not None:
            with contextlib.suppress(Exception):
                await self.mdns.async_close()
            self.mdns = None
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        if self._session is not None:
            await self._session.close()
        self._stopped.set()
        self.write_status()
        log.info(
            "stopped; %d assignments kept in the queue, %d proofs in the outbox",
            self.queue.count,
            self.outbox.count,
        )

    async def run_until_signalled(self) -> None:
        loop = asyncio.get_running_loop()
        stop = self._stop_requested
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            await self.start()
            await stop.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.stop()

    # --- work ---------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._http is not None and not self._stopped.is_set()

    @property
    def pinned_coordinator_id(self) -> str | None:
        pin = self.link.pin if self.link else None
        return pin.coordinator_id if pin else None

    def _has_work(self) -> bool:
        running = self.runner is not None and self.runner.current is not None
        return running or self.queue.count > 0

    def refusal_reason(self) -> str | None:
        """Why a new assignment would be refused right now (before looking at it)."""
        if self.shutting_down:
            return "shutting_down"
        if self.link is not None and not self.link.accepting_work:
            return "quarantined"
        if self.monitor.reason is not None:
            # The device's condition first: it outlasts the current task.
            return self.monitor.reason
        if not self.outbox.has_room():
            return "outbox_full"
        if self.queue.count >= self.config.max_queued_tasks:
            return "busy"
        return None

    def accept(self, a: Assignment) -> str:
        """Queue ``a`` durably or raise ``Refused``/``ApiError``; the state to report."""
        try:
            return self._accept(a)
        except Refused as exc:
            self.metrics.refusals[exc.extra["reason"]] += 1
            raise

    def _accept(self, a: Assignment) -> str:
        if self.shutting_down:
            raise Refused("shutting_down", "the agent is shutting down")
        if a.expires_at <= self.clock_ms():
            raise Refused("expired", "the assignment has expired")
        if a.kind not in self.registry:
            raise Refused("unknown_kind", f"this agent cannot run {a.kind!r}")
        try:
            self.registry.validate(a.kind, a.params, a.chunks)
        except ProtocolError as exc:
            raise ApiError(400, exc.code, exc.message) from None
        except (ImportError, TypeError, AttributeError) as exc:  # a broken plug-in
            log.error("task kind %s cannot be loaded: %s", a.kind, exc)
            raise Refused("unknown_kind", f"task kind {a.kind!r} cannot be loaded") from None
        assert self.runner is not None
        current = self.runner.current
        if current is not None and current.assignment == a:
            return "running"  # the coordinator retried a request we already took
        if self.queue.find(a) is not None:
            return "queued"
        if self.traces.assignment(a.task_id) == a:
            return "done"  # already run; its proof is delivered or in the outbox
        self.runner.sweep()  # expired entries must not hold places in the queue
        reason = self.refusal_reason()
        if reason is not None:
            raise Refused(reason, _REFUSAL_TEXT.get(reason, reason))
        idle = current is None and self.queue.count == 0
        # Durable before the coordinator hears 202: a crash cannot lose accepted work.
        self.queue.add(a, self.clock_ms())
        log.info("task %s accepted (%d in the queue)", a.task_id, self.queue.count)
        self.runner.wake()
        self.status_changed()
        return "running" if idle else "queued"

    def metrics_gauges(self) -> dict[str, tuple[str, float]]:
        """The gauges of ``GET /metrics``, read now (help text, value)."""
        running = self.runner is not None and self.runner.current is not None
        outbox = self.outbox.entries()
        return {
            "outbox_proofs": ("Proofs waiting in the outbox for delivery", len(outbox)),
            "outbox_bytes": (
                "Bytes of the proofs waiting in the outbox",
                sum(e.size for e in outbox),
            ),
            "rejected_proofs": (
                "Proofs the coordinator refused for good, kept for the owner",
                len(self.outbox.rejected()),
            ),
            "queued_tasks": ("Accepted assignments waiting or running", self.queue.count),
            "running_tasks": ("Tasks being computed now (0 or 1)", int(running)),
            "accepting_work": (
                "1 when a new assignment would be accepted now",
                int(self.refusal_reason() is None),
            ),
        }

    def _count_outcome(self, outcome: Outcome) -> None:
        self.metrics.tasks[outcome.result] += 1

    @staticmethod
    def _count(counts: Counter[str]) -> Callable[[str], None]:
        def record(value: str) -> None:
            counts[value] += 1

        return record

    def capabilities(self) -> Capabilities:
        return Capabilities(
            kinds=tuple(self.registry.names()[:32]),
            cpus=os.cpu_count() or 1,
            mem_mb=_total_memory_mb(),
            battery=self.monitor.reading.battery_pct is not None,
            version=__version__,
            endpoint=self.endpoint(),
        )

    def endpoint(self) -> str | None:
        """The URL the coordinator reaches this agent at."""
        if self.port is None:
            return None
        host = self.config.advertise_address
        if host is None and not ipaddress.ip_address(self.config.listen_host).is_unspecified:
            host = self.config.listen_host
        if host is None:
            host = _source_address_towards(self.locator.url)
        if host is None:
            return None
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{self.port}"

    # --- status ---------------------------------------------------------------------------

    def write_status(self) -> None:
        if self._status_due is not None:
            self._status_due.cancel()
            self._status_due = None
        try:
            write_status(self.config.state_dir, daemon_status(self))
        except OSError as exc:
            log.warning("cannot write the status file: %s", exc)

    def status_changed(self) -> None:
        """Refresh the status file soon, once for all the changes of that moment.

        A task changes state several times on its way from assignment to delivered proof;
        writing the file each time put several file replacements on that path. The file
        is for people and ``aeamc-agent status``: a few milliseconds late is fine.
        """
        if self._status_due is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not running (start-up or tests): write now
            self.write_status()
            return
        self._status_due = loop.call_later(STATUS_COALESCE_S, self.write_status)

    # --- internals --------------------------------------------------------------------------

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._crashed)
        self._tasks.append(task)

    def _crashed(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s loop crashed", task.get_name(), exc_info=task.exception())

    def _task_changed(self) -> None:
        if self.sender is not None:
            self.sender.wake()
        self.status_changed()

    def _link_changed(self) -> None:
        if self.runner is not None:
            self.runner.wake()  # quarantine holds the queue; its end releases it
        link = self.link
        healthy = link is not None and link.last_heartbeat_ms is not None and link.state == ACTIVE
        if self.updater is not None and healthy:
            self.updater.heartbeat_accepted()
        self.status_changed()

    # --- fleet updates -----------------------------------------------------------------------

    def _make_updater(self, client: CoordinatorClient) -> Any:
        from .updater import Updater

        return Updater(
            config=self.config,
            key=self.key,
            device_id=self.device_id,
            client=client,
            locator=self.locator,
            flags=lambda: dict(self.link.flags) if self.link else {},
            enrolled=lambda: self.link is not None and self.link.state == "active",
            is_idle=lambda: self.runner is not None and self.runner.current is None,
            hold_work=self._hold_for_update,
            restart=self.request_restart,
            clock_ms=self.clock_ms,
            on_change=self.write_status,
        )

    def _hold_for_update(self) -> None:
        """The update lock: no queued task starts from now on (they wait for the restart)."""
        self.update_hold = True
        if self.runner is not None:
            self.runner.wake()

    def request_restart(self, code: int) -> None:
        """Stop gracefully and exit with ``code`` (the launcher's cue to switch releases)."""
        self.exit_code = code
        self._stop_requested.set()

    def _known_kind(self, kind: str) -> bool:
        return kind in self.registry

    def _hold(self) -> str | None:
        """Why queued work must wait apart from energy: the coordinator wants none."""
        if self.link is not None and not self.link.accepting_work:
            return self.link.state
        if self.update_hold:
            return "updating"
        return None

    def _latency(self, rtt_us: int) -> None:
        self.monitor.latency_us = rtt_us

    async def _housekeeping(self) -> None:
        last_prune = -PRUNE_EVERY_S
        while True:
            try:
                if time.monotonic() - last_prune >= PRUNE_EVERY_S:
                    removed = self.traces.prune(self.clock_ms())
                    if removed:
                        log.info("dropped %d traces past retention", len(removed))
                    retention_ms = int(self.config.trace_retention_s * 1000)
                    self.queue.prune_abandoned(self.clock_ms(), retention_ms)
                    last_prune = time.monotonic()
                if self.runner is not None:
                    self.runner.sweep()
            except OSError as exc:
                log.warning("housekeeping: %s", exc)
            self.write_status()
            await asyncio.sleep(HOUSEKEEPING_S)

    async def _start_mdns(self) -> None:
        from aeamc.shared.runtime.mdns import Mdns

        c = self.config
        self.mdns = Mdns(list(c.mdns_interfaces) or None)
        if c.coordinator_url is None:
            self.mdns.browse(COORDINATOR_SERVICE_TYPE, self._coordinator_event)
        caps = self.capabilities()
        kinds = kinds_that_fit(caps.kinds)
        if len(kinds) < len(caps.kinds):
            log.warning(
                "mDNS TXT lists %d of %d kinds (255-byte limit)", len(kinds), len(caps.kinds)
            )
        advert = AgentAdvert(
            device_id=self.device_id,
            public_key=self.key.public_key.hex(),
            version=__version__,
            kinds=tuple(kinds),
            cpus=caps.cpus,
            mem_mb=caps.mem_mb,
            battery=caps.battery,
        )
        addresses = self._advertised_addresses()
        assert self.port is not None
        try:
            self.advert_name = await self.mdns.async_advertise(
                AGENT_SERVICE_TYPE,
                self.device_id,
                port=self.port,
                properties=advert.txt(),
                addresses=addresses,
                server=f"aeamc-{self.device_id}.local.",
            )
        except Exception as exc:
            # Discovery is a convenience: a configured coordinator still works without it.
            log.error("mDNS advertisement failed: %s", exc)
        else:
            log.info("advertised %s at %s", self.advert_name, ",".join(addresses))

    def _coordinator_event(self, event: ServiceEvent) -> None:
        self.locator.on_event(event)
        if self.sender is not None and self.locator.url is not None:
            self.sender.wake()

    def _advertised_addresses(self) -> list[str]:
        c = self.config
        if c.advertise_address is not None:
            return [c.advertise_address]
        if not ipaddress.ip_address(c.listen_host).is_unspecified:
            return [c.listen_host]
        from aeamc.shared.runtime.mdns import ipv4_addresses

        return ipv4_addresses(list(c.mdns_interfaces) or None)


_REFUSAL_TEXT = {
    "shutting_down": "the agent is shutting down",
    "quarantined": "the coordinator quarantined this device",
    "outbox_full": "undelivered proofs fill the outbox",
    "busy": "the work queue is full",
    "too_hot": "the CPU is too hot",
    "battery_low": "the battery is low and not charging",
    "not_charging": "configured to work only while charging",
}


def _total_memory_mb() -> int:
    import psutil

    return int(psutil.virtual_memory().total) // (1024 * 1024)


def _source_address_towards(url: str | None) -> str | None:
    """Our address on the route to ``url`` (a UDP connect sends no packet)."""
    if url is None:
        return None
    parts = urlsplit(url)
    host = parts.hostname
    if host is None:
        return None
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((host, parts.port or 80))
            return str(s.getsockname()[0])
    except OSError:
        return None
