"""Telemetry polling and the energy policy's live state, for everything that needs them.

The monitor reads the telemetry source every ``interval_s`` (a simulated profile's file
is re-read then too), feeds the pure policy, and wakes whoever waits for a change: the
task runner suspends and resumes on it. The network latency is not a sensor; the
coordinator link records it from real round trips.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aeamc.shared.messages import Telemetry

from .energy import EnergyPolicy, EnergyThresholds
from .telemetry import Reading, TelemetrySource

log = logging.getLogger(__name__)


class EnergyMonitor:
    def __init__(
        self,
        source: TelemetrySource,
        thresholds: EnergyThresholds,
        *,
        interval_s: float,
    ) -> None:
        self.source = source
        self.policy = EnergyPolicy(thresholds)
        self.interval_s = interval_s
        self.reading = Reading()
        self.latency_us: int | None = None
        self._listeners: list[Callable[[], None]] = []
        self._changed = asyncio.Event()

    @property
    def allowed(self) -> bool:
        return self.policy.allowed

    @property
    def reason(self) -> str | None:
        return self.policy.reason

    def telemetry(self) -> Telemetry:
        return self.reading.telemetry(self.latency_us)

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` runs whenever work becomes allowed or disallowed."""
        self._listeners.append(callback)

    def poll(self) -> bool:
        """Take a reading and apply it; return whether work became (dis)allowed."""
        try:
            self.reading = self.source.read()
        except Exception:
            log.exception("telemetry read failed; keeping the previous reading")
            return False
        before = self.policy.reason
        changed = self.policy.update(self.telemetry())
        if changed:
            if self.allowed:
                log.info("energy policy: work allowed again (was %s)", before)
            else:
                log.warning("energy policy: no work (%s)", self.reason)
            for callback in self._listeners:
                callback()
        return changed

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.poll()
