"""The energy policy: when the device may work, decided from telemetry alone (pure).

Like BOINC's computing preferences: no work on a low battery unless charging, none when
the CPU is hot, optionally none unless charging. Each condition has an entry threshold
and a stricter exit threshold (hysteresis): work stops at 19 % battery and resumes only
at 25 %, stops above 75 °C and resumes only at 70 °C or below, so a reading that wobbles
around one threshold never makes the agent flap between running and suspended.

Conditions are tracked independently: resuming from "too hot" does not demand the
battery's resume level unless the battery condition itself was entered.

Unknown readings (``None``) never block: a device without a battery is on mains, and a
device without a temperature sensor cannot be judged by it (the coordinator's EPS scores
the unknown term at 0.5 instead).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # only annotations: config.py (and the launcher) import this module
    from aeamc.shared.messages import Telemetry

TOO_HOT, BATTERY_LOW, NOT_CHARGING = "too_hot", "battery_low", "not_charging"
#: Reported in this order when several hold: heat first, it can damage the device.
PRIORITY = (TOO_HOT, BATTERY_LOW, NOT_CHARGING)


@dataclass(frozen=True)
class EnergyThresholds:
    min_battery_pct: int = 20
    resume_battery_pct: int = 25
    max_temp_c: int = 75
    resume_temp_c: int = 70
    run_only_when_charging: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.min_battery_pct <= 100:
            raise ValueError("min_battery_pct: must be 0-100")
        if not self.min_battery_pct <= self.resume_battery_pct <= 100:
            raise ValueError("resume_battery_pct: must be between min_battery_pct and 100")
        if not -60 <= self.max_temp_c <= 200:
            raise ValueError("max_temp_c: must be -60..200")
        if not -60 <= self.resume_temp_c <= self.max_temp_c:
            raise ValueError("resume_temp_c: must not be above max_temp_c")


def _charging(t: Telemetry) -> bool:
    return t.charging is True


def _on_battery(t: Telemetry) -> bool:
    return t.battery_pct is not None


def holds(condition: str, t: Telemetry, th: EnergyThresholds, *, active: bool) -> bool:
    """Whether ``condition`` holds now; ``active`` selects the exit (resume) threshold."""
    if condition == TOO_HOT:
        if t.cpu_temp_mc is None:
            return False
        limit_c = th.resume_temp_c if active else th.max_temp_c
        return t.cpu_temp_mc > limit_c * 1000
    if condition == BATTERY_LOW:
        if not _on_battery(t) or _charging(t):
            return False
        assert t.battery_pct is not None
        floor = th.resume_battery_pct if active else th.min_battery_pct
        return t.battery_pct < floor
    if condition == NOT_CHARGING:
        return th.run_only_when_charging and _on_battery(t) and not _charging(t)
    raise ValueError(f"unknown condition {condition!r}")


def step(active: frozenset[str], t: Telemetry, th: EnergyThresholds) -> frozenset[str]:
    """The conditions in force after reading ``t``, given those in force before."""
    return frozenset(c for c in PRIORITY if holds(c, t, th, active=c in active))


def reason(active: frozenset[str]) -> str | None:
    """The machine reason reported for refusing work, or ``None`` when work may run."""
    for c in PRIORITY:
        if c in active:
            return c
    return None


class EnergyPolicy:
    """The policy's state between readings; ``update`` is the only way it changes."""

    def __init__(self, thresholds: EnergyThresholds) -> None:
        self.thresholds = thresholds
        self.active: frozenset[str] = frozenset()

    @property
    def allowed(self) -> bool:
        return not self.active

    @property
    def reason(self) -> str | None:
        return reason(self.active)

    def update(self, t: Telemetry) -> bool:
        """Apply a reading; return whether ``allowed`` changed."""
        before = self.allowed
        self.active = step(self.active, t, self.thresholds)
        return before != self.allowed
