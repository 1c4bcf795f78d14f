"""The agent's own Prometheus metrics, served at ``GET /metrics`` on its endpoint.

A small set, enough for an owner or an operator to see whether a device works, why it
refuses, and whether its proofs get through: tasks by result, refusals by reason, proof
deliveries by result, heartbeats by result, and the outbox and queue sizes. One
``aeamc_agent_`` prefix, ``_total`` on counters, a ``_build_info``. No telemetry values
(battery, temperature) are exported: anyone on the LAN can scrape this endpoint, and those
readings only go to the coordinator the device enrolled with.

Counting is plain dictionaries, updated from the runner, the sender, the link and the
refusal path. ``prometheus_client`` renders them, but is imported only when someone first
scrapes: an agent that is never scraped does not carry the library's ~12 MB in memory.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .outbox import Outbox

PREFIX = "aeamc_agent"
#: Task results as the runner reports them (runner.Outcome.result).
TASK_RESULTS = ("queued", "abandoned", "interrupted")
#: Proof delivery results as the sender reports them (sender.DELIVERED …).
DELIVERY_RESULTS = ("delivered", "rejected", "resigned", "retry")
HEARTBEAT_RESULTS = ("accepted", "refused", "unreachable")
#: Machine reasons a valid assignment is refused with (HTTP 409, ``error.reason``).
REFUSAL_REASONS = (
    "shutting_down",
    "expired",
    "unknown_kind",
    "outside_policy",
    "quarantined",
    "too_hot",
    "battery_low",
    "not_charging",
    "outbox_full",
    "busy",
)


@dataclass
class AgentMetrics:
    """What the agent has done since it started; gauges are read from it when scraped."""

    tasks: Counter[str] = field(default_factory=Counter)
    refusals: Counter[str] = field(default_factory=Counter)
    deliveries: Counter[str] = field(default_factory=Counter)
    heartbeats: Counter[str] = field(default_factory=Counter)

    def render(self, version: str, gauges: Mapping[str, tuple[str, float]]) -> tuple[bytes, str]:
        """The exposition text and its content type.

        ``gauges`` maps a metric name (without prefix) to its help text and current value.
        """
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
        from prometheus_client.exposition import generate_latest

        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Collector(self, version, gauges))
        return generate_latest(registry), CONTENT_TYPE_LATEST


def gauges(
    outbox: Outbox, *, queued: int, running: bool, accepting: bool
) -> dict[str, tuple[str, float]]:
    """The gauges of ``GET /metrics`` (help text, value): the outbox as it is now, the
    queue's length, whether a task runs and whether a new assignment would be taken."""
    waiting = outbox.entries()
    return {
        "outbox_proofs": ("Proofs waiting in the outbox for delivery", len(waiting)),
        "outbox_bytes": ("Bytes of the proofs waiting in the outbox", sum(e.size for e in waiting)),
        "rejected_proofs": (
            "Proofs the coordinator refused for good, kept for the owner",
            len(outbox.rejected()),
        ),
        "queued_tasks": ("Accepted assignments waiting or running", queued),
        "running_tasks": ("Tasks being computed now (0 or 1)", int(running)),
        "accepting_work": ("1 when a new assignment would be accepted now", int(accepting)),
    }


class _Collector:
    def __init__(
        self, metrics: AgentMetrics, version: str, gauges: Mapping[str, tuple[str, float]]
    ) -> None:
        self.m = metrics
        self.version = version
        self.gauges = gauges

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        build = GaugeMetricFamily(
            f"{PREFIX}_build_info", "Version of the running agent", labels=["version"]
        )
        build.add_metric([self.version], 1)
        yield build

        def counter(
            name: str, doc: str, label: str, counts: Counter[str], known: tuple[str, ...]
        ) -> CounterMetricFamily:
            family = CounterMetricFamily(f"{PREFIX}_{name}", doc, labels=[label])
            # Known label values appear at 0 so rates and alerts work from the first scrape.
            for value in sorted(set(known) | set(counts)):
                family.add_metric([value], counts.get(value, 0))
            return family

        yield counter(
            "tasks", "Tasks finished by the runner, by result", "result", self.m.tasks, TASK_RESULTS
        )
        yield counter(
            "refusals",
            "Assignments refused, by reason",
            "reason",
            self.m.refusals,
            REFUSAL_REASONS,
        )
        yield counter(
            "proof_deliveries",
            "Attempts to deliver a proof from the outbox, by result",
            "result",
            self.m.deliveries,
            DELIVERY_RESULTS,
        )
        yield counter(
            "heartbeats",
            "Heartbeats sent, by result",
            "result",
            self.m.heartbeats,
            HEARTBEAT_RESULTS,
        )
        for name, (doc, value) in self.gauges.items():
            yield GaugeMetricFamily(f"{PREFIX}_{name}", doc, value=value)
