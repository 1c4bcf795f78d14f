"""One ``/metrics`` for several worker processes (SPEC §16).

Prometheus scrapes one address, and the request lands on whichever worker the kernel
picks, which relays it to the leader. So every worker writes its counters — the
service's (heartbeats, proofs, …) and the HTTP request counts and latency histograms —
to ``<state_dir>/workers/metrics-<pid>.json`` every ``interval`` seconds, and the leader
adds the files of the others to its own at each scrape. Files of workers that ended stay,
so the sums never go down while the service runs (a worker killed loses at most its last
interval); the supervisor clears the folder when the service starts, as a restart of a
single process would reset its counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from aeamc.shared.runtime.files import atomic_write

log = logging.getLogger(__name__)

#: Seconds between two snapshots of a worker's counters.
SHARE_INTERVAL_S = 2.0
#: Samples that describe one process, not a count: never added across workers.
_PER_PROCESS_SUFFIXES = ("_created",)


def metrics_dir(state_dir: Path) -> Path:
    return state_dir / "workers"


def clear(state_dir: Path) -> None:
    """Forget every worker's counters (the service starts afresh)."""
    folder = metrics_dir(state_dir)
    if folder.is_dir():
        for f in folder.glob("metrics-*.json"):
            f.unlink(missing_ok=True)


def _samples(metrics: Iterable[Any]) -> list[list[Any]]:
    """[name, labels, value] of every sample of ``metrics`` that adds across workers."""
    out: list[list[Any]] = []
    for family in metrics:
        for s in family.collect():
            for sample in s.samples:
                if not sample.name.endswith(_PER_PROCESS_SUFFIXES):
                    out.append([sample.name, dict(sample.labels), sample.value])
    return out


class SharedMetrics:
    """This worker's side: its snapshots; the leader's side: the others' sums."""

    def __init__(self, state_dir: Path, counters: dict[str, int], metrics: list[Any]) -> None:
        self.folder = metrics_dir(state_dir)
        self.pid = os.getpid()
        #: The service's counters (``Context.counters``), read at each snapshot.
        self.counters = counters
        #: The prometheus_client metrics (request counts, latencies) shared the same way.
        self.metrics = metrics

    def write(self) -> None:
        """Write this worker's snapshot (atomically: a reader never sees half of one)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        body = {"counters": dict(self.counters), "samples": _samples(self.metrics)}
        # Not made durable: a power loss restarts the service, which clears the folder.
        atomic_write(
            self.folder / f"metrics-{self.pid}.json",
            json.dumps(body).encode(),
            mode=0o600,
            durable=False,
        )

    async def run(self, interval_s: float = SHARE_INTERVAL_S) -> None:
        while True:
            try:
                await asyncio.to_thread(self.write)
            except Exception:
                log.exception("writing this worker's metrics failed")
            await asyncio.sleep(interval_s)

    def others(self) -> list[dict[str, Any]]:
        """Every other worker's latest snapshot (those that ended included)."""
        out = []
        for f in sorted(self.folder.glob("metrics-*.json")):
            if f.name == f"metrics-{self.pid}.json":
                continue
            with contextlib.suppress(OSError, ValueError):
                out.append(json.loads(f.read_text()))
        return out

    def counter_sums(self) -> dict[str, int]:
        """The service's counters of every worker, this one's live."""
        total = dict(self.counters)
        for snap in self.others():
            for name, n in snap.get("counters", {}).items():
                if isinstance(n, int):
                    total[name] = total.get(name, 0) + n
        return total


class SummedCollector(Collector):
    """``metric`` (a prometheus_client counter or histogram of this process) with the
    same samples of every other worker added in: one family, as if one process counted."""

    def __init__(self, metric: Any, shared: SharedMetrics | None) -> None:
        self.metric = metric
        self.shared = shared

    def collect(self) -> Iterator[Metric]:
        others: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        if self.shared is not None:
            for snap in self.shared.others():
                for name, labels, value in snap.get("samples", []):
                    key = (name, tuple(sorted(labels.items())))
                    others[key] = others.get(key, 0.0) + float(value)
        for family in self.metric.collect():
            seen = set()
            samples = []
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                seen.add(key)
                samples.append(s._replace(value=s.value + others.get(key, 0.0)))
            # Label sets only other workers have seen (a route this one never served).
            for (name, labels), value in others.items():
                if (name, labels) not in seen and name.startswith(family.name):
                    samples.append(Sample(name, dict(labels), value))
            family.samples = samples
            yield family
