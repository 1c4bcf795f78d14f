"""A ring buffer of fleet samples for the dashboard's charts.

The charts need history the moment the page opens (an operator who reloads should not
stare at an empty chart for minutes), so the coordinator keeps the last hour of samples
itself, taken every two seconds from its in-memory state only: no database query, O(number
of devices) per sample. The buffer is lost on restart, like the counters it is derived from.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from aeamc.shared.eps import eps

if TYPE_CHECKING:
    from ..service import Coordinator

log = logging.getLogger(__name__)

SAMPLE_INTERVAL_S = 2.0
#: One hour at one sample every two seconds.
SAMPLE_CAPACITY = 1800


@dataclass(frozen=True)
class Sample:
    #: Coordinator time of the sample (ms since the epoch).
    t: int
    #: Proofs accepted since the coordinator started (rates come from differences).
    proofs: int
    #: Microblocks formed since the coordinator started.
    blocks: int
    active: int
    #: EPS of the active devices that have reported telemetry; ``None`` when there are none.
    eps_mean: float | None
    eps_min: float | None
    eps_max: float | None


class Sampler:
    def __init__(
        self,
        coordinator: Coordinator,
        *,
        interval_s: float = SAMPLE_INTERVAL_S,
        capacity: int = SAMPLE_CAPACITY,
    ) -> None:
        self.c = coordinator
        self.interval_s = interval_s
        self.samples: deque[Sample] = deque(maxlen=capacity)

    def take(self) -> Sample:
        """Sample the fleet now and keep the sample."""
        c = self.c
        active = [d for d in c.devices.values() if d.state == "active"]
        scores = [eps(d.telemetry, c.eps_config) for d in active if d.telemetry is not None]
        sample = Sample(
            t=c.clock(),
            proofs=c.counters.get("proofs_accepted", 0),
            blocks=c.counters.get("blocks", 0),
            active=len(active),
            eps_mean=round(sum(scores) / len(scores), 4) if scores else None,
            eps_min=round(min(scores), 4) if scores else None,
            eps_max=round(max(scores), 4) if scores else None,
        )
        self.samples.append(sample)
        return sample

    def since(self, t: int) -> list[dict[str, Any]]:
        """Samples strictly newer than ``t`` (the page asks only for what it lacks)."""
        return [asdict(s) for s in self.samples if s.t > t]

    async def run(self) -> None:
        while True:
            try:
                self.take()
            except Exception:  # a bad sample must never stop the coordinator's loops
                log.exception("sampling the fleet for the dashboard failed")
            await asyncio.sleep(self.interval_s)
