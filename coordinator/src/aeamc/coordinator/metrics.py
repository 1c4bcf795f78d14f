"""Prometheus metrics at ``/metrics``: one ``aeamc_coordinator_`` prefix, base units,
``_total`` on counters, a ``_build_info``, and never a per-device label (a fleet of ten
thousand devices must not become ten thousand series). The standard ``process_`` and
``python_`` metrics of prometheus_client (CPU, memory, open files) come alongside.

Request metrics are recorded by the API's front layer (api.py); everything about the fleet
is read from the coordinator when Prometheus scrapes, so no second bookkeeping can drift from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from . import __version__
from .overload import DEVICE_ROUTES, Admission
from .service import Coordinator
from .updates.rollouts import UpdatesCollector
from .workermetrics import SharedMetrics, SummedCollector

PREFIX = "aeamc_coordinator"
DEVICE_STATES = ("pending", "active", "stale", "quarantined")
VERDICTS = ("passed", "failed", "unanswered")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: The routes whose shed requests are counted (always exported, 0 until one is).
SHED_ROUTES = tuple(sorted({route for _, route in DEVICE_ROUTES}))


#: (status key, metric name, help) of the anchoring gauges exported only when known.
OPTIONAL_ANCHORING_GAUGES = (
    (
        "oldest_unanchored_age_s",
        "oldest_unanchored_block_age_seconds",
        "Seconds since the oldest microblock not yet covered by a final anchor formed",
    ),
    (
        "last_final_anchor_age_s",
        "last_anchor_age_seconds",
        "Seconds since the last anchor became final",
    ),
    (
        "balance_wei",
        "wallet_balance_wei",
        "Balance of the anchoring wallet (wei, the chain's base unit)",
    ),
)


class FleetCollector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics
        self.c = metrics.c
        #: The other worker processes' counters (several workers), added to ours.
        self.shared = metrics.shared

    def collect(self) -> Iterator[Metric]:
        c = self.c
        build = GaugeMetricFamily(
            f"{PREFIX}_build_info", "Version of the running coordinator", labels=["version"]
        )
        build.add_metric([__version__], 1)
        yield build
        devices = GaugeMetricFamily(
            f"{PREFIX}_devices", "Enrolled devices by state", labels=["state"]
        )
        states = dict.fromkeys(DEVICE_STATES, 0)
        for d in c.devices.values():
            states[d.state] = states.get(d.state, 0) + 1
        for state, n in states.items():
            devices.add_metric([state], n)
        yield devices
        counters = c.counters if self.shared is None else self.shared.counter_sums()

        def counter(name: str, doc: str, key: str) -> CounterMetricFamily:
            return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=counters.get(key, 0))

        yield counter("heartbeats", "Heartbeats accepted", "heartbeats")
        yield counter("enrollments", "Enrollment requests accepted", "enrollments")
        yield counter("tasks_submitted", "Tasks accepted from clients", "tasks_submitted")
        yield counter("blocks", "Microblocks formed", "blocks")
        yield counter(
            "spot_check_chunks_reexecuted",
            "Chunks the coordinator re-executed to judge spot-checks",
            "spot_check_chunks_reexecuted",
        )
        proofs = CounterMetricFamily(
            f"{PREFIX}_proofs", "Proof-of-Task submissions by result", labels=["result"]
        )
        proofs.add_metric(["accepted"], counters.get("proofs_accepted", 0))
        proofs.add_metric(["rejected"], counters.get("proofs_rejected", 0))
        yield proofs
        checks = CounterMetricFamily(
            f"{PREFIX}_spot_checks", "Spot-check verdicts", labels=["verdict"]
        )
        for verdict in VERDICTS:
            checks.add_metric([verdict], counters.get(f"spot_checks_{verdict}", 0))
        yield checks
        assignments = CounterMetricFamily(
            f"{PREFIX}_assignments", "Assignments pushed to devices by outcome", labels=["outcome"]
        )
        assignments.add_metric(["accepted"], counters.get("assignments_accepted", 0))
        assignments.add_metric(["refused"], counters.get("assignments_refused", 0))
        yield assignments
        yield GaugeMetricFamily(
            f"{PREFIX}_unblocked_receipts",
            "Accepted proofs waiting for a microblock",
            value=self.m.unblocked,
        )
        leadership: Any = c.status_sections.get("leadership")
        if leadership is not None:
            leader = GaugeMetricFamily(
                f"{PREFIX}_leader",
                "1 on the node (process) that leads, labelled with its name and term",
                labels=["node", "term"],
            )
            view = leadership.node_view()
            leader.add_metric([view["node"], str(view["term"] or "")], 1 if view["leading"] else 0)
            yield leader
        yield GaugeMetricFamily(
            f"{PREFIX}_database_size_bytes",
            "Bytes of the database (SQLite: the file and its write-ahead log)",
            value=c.db.size_bytes(),
        )


class AnchoringCollector(Collector):
    """The runbook's anchoring signals, from the status read just before the scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        a = self.m.anchoring
        if not a or not a.get("enabled", False):
            return
        yield GaugeMetricFamily(
            f"{PREFIX}_unanchored_blocks",
            "Microblocks not yet covered by a final anchor",
            value=a.get("unanchored_blocks", 0),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_anchor_interval_seconds",
            "The configured chain.anchor_interval_s",
            value=a.get("anchor_interval_s", 0),
        )
        # Gauges of what may not exist yet (no waiting block, no final anchor, no balance
        # read): absent rather than 0, so a rule never mistakes "none" for "zero".
        for key, name, text in OPTIONAL_ANCHORING_GAUGES:
            if a.get(key) is not None:
                yield GaugeMetricFamily(f"{PREFIX}_{name}", text, value=a[key])
        yield CounterMetricFamily(
            f"{PREFIX}_anchoring_rpc_errors",
            "Failed calls to the chain's JSON-RPC endpoint",
            value=a.get("rpc_errors", 0),
        )
        anchors = CounterMetricFamily(
            f"{PREFIX}_anchors", "Anchor transactions by outcome", labels=["outcome"]
        )
        for outcome, n in sorted((a.get("counters") or {}).items()):
            anchors.add_metric([outcome], n)
        yield anchors


class Metrics:
    """The metrics of one coordinator process; ``shared_dir``: one of several worker
    processes, whose counts are shared through that state directory (workermetrics.py)."""

    def __init__(self, coordinator: Coordinator, shared_dir: Path | None = None) -> None:
        self.c = coordinator
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests by route, method and status",
            ["route", "method", "status"],
            registry=None,
        )
        self.latency = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time to answer HTTP requests",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=None,
        )
        self.shared = (
            None
            if shared_dir is None
            else SharedMetrics(shared_dir, coordinator.counters, [self.requests, self.latency])
        )
        self.registry.register(SummedCollector(self.requests, self.shared))
        self.registry.register(SummedCollector(self.latency, self.shared))
        self.anchoring: dict[str, Any] | None = None
        #: Accepted proofs not yet in a block, read from the store just before the scrape.
        self.unblocked = 0
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        #: The API's admission of device requests (overload.py), read at each scrape.
        self.admission: Admission | None = None
        self.registry.register(AdmissionCollector(self))
        self.registry.register(FleetCollector(self))
        self.registry.register(AnchoringCollector(self))
        self.registry.register(UpdatesCollector(coordinator))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)

    def record(self, route: str, method: str, status: int, elapsed: float) -> None:
        """Count one answered request (by the status the API's error layer chose)."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            # A labelled child is looked up under a lock: once per (route, method, status).
            children = self._children[key] = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route),
            )
        children[0].inc()
        children[1].observe(elapsed)
        self.c.status.observe_request(status, elapsed)
        # A proof shed for load (503, overload.py) was not judged: it is not rejected.
        if status >= 400 and status != 503 and route == "/v1/proofs":
            self.c.count("proofs_rejected")

    async def handler(self, request: web.Request) -> web.Response:
        self.anchoring = await self.c.status.anchoring()
        self.unblocked = await self.c.status.unblocked_receipts()
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class AdmissionCollector(Collector):
    """Device requests in flight, and those answered 503 ``overloaded`` (overload.py)."""

    def __init__(self, metrics: Metrics) -> None:
        self.m = metrics

    def collect(self) -> Iterator[Metric]:
        admission = self.m.admission
        if admission is None:
            return
        yield GaugeMetricFamily(
            f"{PREFIX}_http_requests_inflight",
            "Heartbeat and proof requests being handled now (bounded by server.max_inflight)",
            value=admission.inflight,
        )
        if admission.lag is not None:
            yield GaugeMetricFamily(
                f"{PREFIX}_event_loop_lag_seconds",
                "How late this process's event loop runs what is due, smoothed",
                value=admission.lag.lag_s,
            )
        yield GaugeMetricFamily(
            f"{PREFIX}_queue_delay_seconds",
            "How long device requests wait in this process: the loop's lateness or the "
            "heartbeats' standing delay (sheds heartbeats and proofs past "
            "server.max_queue_delay_ms)",
            value=admission.delay_s(),
        )
        shed = CounterMetricFamily(
            f"{PREFIX}_http_requests_shed",
            "Heartbeat and proof requests refused with 503 overloaded before their body was read",
            labels=["route"],
        )
        for route in SHED_ROUTES:
            shed.add_metric([route], admission.shed.get(route, 0))
        yield shed


def route_of(request: web.Request) -> str:
    """The route template (``/v1/tasks/{task_id}``), never the raw path: bounded labels."""
    info = request.match_info
    resource = info.route.resource if info.route is not None else None
    if resource is None or info.http_exception is not None:
        return "unmatched"
    return resource.canonical
