"""The agent daemon: wires the pieces together and runs them on one asyncio loop.

================  =========================================================================
monitor           reads telemetry, keeps the energy policy (monitor.py, energy.py)
link              enrollment and heartbeats (link.py)
locator           where the coordinator is: configured URL or mDNS (locator.py)
server            assignments, challenges, health (server.py); what is taken: admission.py
queue             accepted assignments, durable until their proof is queued (workqueue.py)
runner            runs the queue in order, chunk by chunk in a worker process (runner.py)
sender            delivers the durable outbox of proofs (sender.py, outbox.py)
mdns              advertises ``_aeamc-agent._tcp`` and browses ``_aeamc-coord._tcp``
                  (advertising.py)
upkeep            the status file and pruning of old state (housekeeping.py)
================  =========================================================================

``Agent`` holds the pieces and the few decisions that need several of them (whether work
waits, what the status says); each piece's own logic lives in its module.

Shutdown (SIGTERM/SIGINT): refuse new work with ``shutting_down``, let the chunk in flight
finish within the grace period, withdraw the mDNS advert, stop the server; the queue,
outbox and traces stay on disk for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util
import logging
import os
from collections import Counter
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aeamc.shared.messages import Assignment, Capabilities, ChunkFaultReport, WorkReport, sign
from aeamc.shared.runtime.clock import now_ms
from aeamc.shared.runtime.edge import EdgeLimits
from aeamc.shared.runtime.services import ServiceEvent
from aeamc.shared.runtime.systemd import notify as notify_systemd
from aeamc.shared.tasks.registry import discover
from aeamc.shared.tasks.wasm_kernel import WasmKernel

from . import admission, advertising, endpoint, metrics
from .backoff import Backoff
from .client import CoordinatorClient, Unreachable
from .config import AgentConfig
from .content import CONTENT_DIR, ContentCache, ContentUnavailable
from .housekeeping import StatusFile, housekeeping
from .keystore import load_identity
from .launcher import LAUNCHER_ENV
from .lifecycle import Lifecycle
from .link import ACTIVE, CoordinatorLink, longest_heartbeat_gap_s
from .locator import CoordinatorLocator
from .metrics import AgentMetrics
from .monitor import EnergyMonitor
from .net import client_session, heartbeat_keepalive_s, start_server
from .outbox import Outbox
from .runner import Outcome, TaskRunner
from .sender import OutboxSender
from .server import make_app
from .state import (
    ABANDONED_DIR,
    OUTBOX_DIR,
    QUEUE_DIR,
    REJECTED_DIR,
    TRACES_DIR,
    CoordinatorPin,
    SeqCounter,
    ensure_dir,
)
from .status import daemon_status
from .telemetry import TelemetrySource, make_source
from .tls import AgentTls
from .traces import TraceStore
from .worker import ChunkPool
from .workqueue import WorkQueue

if TYPE_CHECKING:  # zeroconf only with mDNS on (advertising.py)
    from aeamc.shared.runtime.mdns import Mdns

log = logging.getLogger(__name__)


def _sandbox_installed() -> bool:
    """Whether the WebAssembly engine is installed (the agent's ``[wasm]`` extra): without
    it the ``wasm`` kind is neither advertised nor run, whatever ``wasm.enabled`` says."""
    if importlib.util.find_spec("wasmtime") is not None:
        return True
    log.warning("wasm.enabled, but wasmtime is not installed: no WebAssembly work")
    return False


#: Waits between attempts to deliver a chunk-fault report (then the assignment expires).
FAULT_REPORT_RETRIES_S = (2.0, 5.0, 15.0, 30.0)


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        env: Mapping[str, str] = os.environ,
        source: TelemetrySource | None = None,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        """Load identity and state; raises on anything that makes running pointless."""
        self.config = config
        self.clock_ms = clock_ms
        state = ensure_dir(config.state_dir)
        self.key = load_identity(state, config.identity_key)
        self.device_id = self.key.device_id
        self.content = ContentCache(state / CONTENT_DIR, config.wasm_cache_max_bytes)
        self.wasm = config.wasm_enabled and _sandbox_installed()
        self.registry = discover([("wasm", WasmKernel(self.content))] if self.wasm else ())
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
        self.pool = ChunkPool(self.content.directory if self.wasm else None)
        self.shutting_down = False
        self.started_ms = clock_ms()
        self.metrics = AgentMetrics()
        self.status = StatusFile(config.state_dir, lambda: daemon_status(self))
        self.port: int | None = None
        self.link: CoordinatorLink | None = None
        self.runner: TaskRunner | None = None
        self.sender: OutboxSender | None = None
        self.mdns: Mdns | None = None
        self.advert_name: str | None = None
        self.lifecycle = Lifecycle()
        #: Fleet updates (updater.py): only under the launcher, which can switch releases.
        self.updater: Any = None
        self.update_hold = False
        self.exit_code = 0
        if config.is_demo_cheater:
            log.warning(
                "DEMO CHEATER: this agent fakes %.0f%% of chunk outputs without computing "
                "them; it exists to show spot-checks catching a cheater",
                config.cheat_fraction * 100,
            )

    async def _prepare(self, client: CoordinatorClient, a: Assignment) -> None:
        """A ``wasm`` task's module and input, fetched over this device's certificate; a
        module larger than the owner's ``wasm.max_module_bytes`` is not read past that
        limit, and fails the task (SPEC §3.1)."""
        if a.kind != "wasm":
            return
        module_limit = self.config.wasm_max_module_bytes

        async def fetch(digest: str, max_bytes: int) -> tuple[int, bytes]:
            url = self.locator.url
            if url is None:
                raise ContentUnavailable("no coordinator is known right now", lasting=False)
            is_module = digest == a.params["module"]
            limit = min(max_bytes, module_limit) if is_module else max_bytes
            try:
                status, data = await client.fetch(f"{url.rstrip('/')}/v1/content/{digest}", limit)
            except Unreachable as exc:
                raise ContentUnavailable(str(exc), lasting=False) from None
            if is_module and len(data) > module_limit:
                raise ContentUnavailable(
                    f"module {digest} is larger than the {module_limit} bytes this device allows",
                    lasting=True,
                )
            return status, data

        await self.content.ensure((a.params["module"], a.params["input"]), fetch)

    def _report_fault(
        self, client: CoordinatorClient, a: Assignment, index: int, code: str
    ) -> None:
        """Send a signed ``chunk_fault`` for chunk ``index`` of ``a``, in the background,
        a few times over a minute while the coordinator cannot be reached. Unsent, the
        assignment simply expires at the coordinator."""
        report = sign(
            ChunkFaultReport,
            {
                "type": "chunk_fault",
                "task_id": a.task_id,
                "device_id": self.device_id,
                "chunk": index,
                "code": code,
                "timestamp": self.clock_ms(),
            },
            self.key,
        ).to_dict()

        async def send() -> None:
            for delay in FAULT_REPORT_RETRIES_S:
                url = self.locator.url
                if url is not None:
                    try:
                        reply = await client.post(url, "/v1/faults", report)
                    except Unreachable as exc:
                        log.warning("chunk fault of %s not delivered: %s", a.task_id, exc)
                    else:
                        log.info(
                            "chunk fault of %s reported: HTTP %d %s",
                            a.task_id,
                            reply.status,
                            reply.error_code or "",
                        )
                        return
                await asyncio.sleep(delay)

        self.lifecycle.spawn(send(), name=f"fault-{a.task_id}")

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        c = self.config
        gap_s = longest_heartbeat_gap_s(c.heartbeat_interval_s, c.heartbeat_jitter)
        session = client_session(
            timeout_s=c.request_timeout_s, keepalive_s=heartbeat_keepalive_s(gap_s)
        )
        self.lifecycle.session = session
        client = CoordinatorClient(session, tls=self.tls)
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
            on_heartbeat=_count(self.metrics.heartbeats),
            tls=self.tls,
            work=self._work_in_hand,
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
            known_kind=self.registry.__contains__,
            hold=self._hold,
            prepare=functools.partial(self._prepare, client),
            report_fault=functools.partial(self._report_fault, client),
            discard_content=self.content.discard,
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
            on_result=_count(self.metrics.deliveries),
        )
        if c.updates_enabled and os.environ.get(LAUNCHER_ENV):
            self.updater = self._make_updater(client)
        self.lifecycle.http, self.port = await start_server(
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
        spawn = self.lifecycle.spawn
        if c.mdns_enabled:
            # Probing and announcing take a second or two; nothing needs to wait for them.
            spawn(self._start_mdns(), "mdns")
        spawn(self.link.run(), "link")
        spawn(self.sender.run(), "sender")
        spawn(self.monitor.run(), "monitor")
        spawn(self._housekeeping(), "housekeeping")
        if self.updater is not None:
            spawn(self.updater.run(), "updater")
        if self.queue.count:
            log.info("%d accepted assignments waiting from before the restart", self.queue.count)
        self.runner.start()
        self.write_status()
        notify_systemd("READY=1")

    async def stop(self) -> None:
        """Graceful shutdown; the outbox and traces stay for the next start."""
        if self.lifecycle.stopped.is_set():
            return
        self.shutting_down = True
        notify_systemd("STOPPING=1")
        log.info("shutting down: taking no new work")
        if self.runner is not None:
            await self.runner.stop(self.config.shutdown_grace_s)
        else:
            await self.pool.close(0)
        await self.lifecycle.cancel_loops()
        if self.mdns is not None:
            with contextlib.suppress(Exception):
                await self.mdns.async_close()
            self.mdns = None
        await self.lifecycle.close()
        self.write_status()
        log.info(
            "stopped; %d assignments kept in the queue, %d proofs in the outbox",
            self.queue.count,
            self.outbox.count,
        )

    async def run_until_signalled(self) -> None:
        """Run until SIGTERM, SIGINT or ``request_restart``, then stop gracefully."""
        await self.lifecycle.run_until_signalled(self.start, self.stop)

    def request_restart(self, code: int) -> None:
        """Stop gracefully and exit with ``code`` (the launcher's cue to switch releases)."""
        self.exit_code = code
        self.lifecycle.stop_requested.set()

    # --- what the HTTP API and the status file read (view.AgentView) ----------------------

    @property
    def running(self) -> bool:
        return self.lifecycle.running

    @property
    def pinned_coordinator_id(self) -> str | None:
        pin = self.link.pin if self.link else None
        return pin.coordinator_id if pin else None

    def refusal_reason(self) -> str | None:
        """Why a new assignment would be refused right now (admission.py)."""
        return admission.refusal_reason(self)

    def accept(self, a: Assignment) -> str:
        """Queue ``a`` durably or raise ``Refused``/``ApiError`` (admission.py)."""
        return admission.admit(self, a)

    def metrics_gauges(self) -> dict[str, tuple[str, float]]:
        """The gauges of ``GET /metrics``, read now (help text, value)."""
        return metrics.gauges(
            self.outbox,
            queued=self.queue.count,
            running=self.runner is not None and self.runner.current is not None,
            accepting=self.refusal_reason() is None,
        )

    def capabilities(self) -> Capabilities:
        battery = self.monitor.reading.battery_pct is not None
        return endpoint.capabilities(
            self.registry, self.config, battery=battery, endpoint=self.endpoint()
        )

    def endpoint(self) -> str | None:
        """The URL the coordinator reaches this agent at."""
        return endpoint.endpoint_url(self.config, self.port, self.locator.url)

    def write_status(self) -> None:
        self.status.write()

    def status_changed(self) -> None:
        """Refresh the status file soon, once for all the changes of that moment."""
        self.status.changed()

    # --- how the pieces tell each other ------------------------------------------------------

    def _has_work(self) -> bool:
        running = self.runner is not None and self.runner.current is not None
        return running or self.queue.count > 0

    def _work_in_hand(self) -> list[WorkReport]:
        """The tasks held and their chunks done, for the next heartbeat (runner.py)."""
        return self.runner.work_in_hand() if self.runner is not None else []

    def _hold(self) -> str | None:
        """Why queued work must wait apart from energy: the coordinator wants none."""
        if self.link is not None and not self.link.accepting_work:
            return self.link.state
        if self.update_hold:
            return "updating"
        return None

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

    def _count_outcome(self, outcome: Outcome) -> None:
        self.metrics.tasks[outcome.result] += 1

    def _latency(self, rtt_us: int) -> None:
        self.monitor.latency_us = rtt_us

    def _coordinator_event(self, event: ServiceEvent) -> None:
        self.locator.on_event(event)
        if self.sender is not None and self.locator.url is not None:
            self.sender.wake()

    async def _housekeeping(self) -> None:
        await housekeeping(
            traces=self.traces,
            queue=self.queue,
            runner=lambda: self.runner,
            clock_ms=self.clock_ms,
            retention_s=self.config.trace_retention_s,
            status=self.status,
        )

    async def _start_mdns(self) -> None:
        self.mdns = advertising.open_mdns(self.config, self._coordinator_event)
        assert self.port is not None
        self.advert_name = await advertising.advertise(
            self.mdns,
            self.config,
            device_id=self.device_id,
            public_key=self.key.public_key.hex(),
            caps=self.capabilities(),
            port=self.port,
        )

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


def _count(counts: Counter[str]) -> Callable[[str], None]:
    """A callback that counts each value it is given in ``counts``."""

    def record(value: str) -> None:
        counts[value] += 1

    return record
