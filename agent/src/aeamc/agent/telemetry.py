"""Telemetry sources: the device's real sensors (psutil) or a simulated profile for demos.

A reading reports what the device can tell and ``None`` for what it cannot: no battery,
no temperature sensor, no CPU-load sample yet. Nothing is ever estimated or defaulted.
Latency is not read here: the coordinator link measures it on real round trips.

CPU temperature: psutil groups sensors by driver. The first driver present in
``CPU_SENSOR_PREFERENCE`` is used, because those measure the CPU die itself; ``acpitz``
(an ACPI thermal zone, often the motherboard) is the last resort. Within a driver the
package/die reading is preferred (``Package id 0``, ``Tctl``, ``Tdie``), else the hottest
core, since the policy protects the hottest part.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

from aeamc.shared.messages import Telemetry

log = logging.getLogger(__name__)

SIMULATION_ENV = "AEAMC_SIMULATED_TELEMETRY"
#: Drivers measuring the CPU die, best first; ``acpitz`` is a last resort (board zone).
CPU_SENSOR_PREFERENCE = (
    "coretemp",  # Intel
    "k10temp",  # AMD (in-tree)
    "zenpower",  # AMD (out-of-tree alternative to k10temp)
    "cpu_thermal",  # Raspberry Pi and other ARM SoCs (thermal zone "cpu-thermal")
    "cpu-thermal",
    "soc_thermal",  # Rockchip and other SoCs
    "soc-thermal",
    "acpitz",
)
#: Labels that name the whole package/die rather than one core.
PACKAGE_LABELS = ("package id 0", "tctl", "tdie", "physical id 0", "cpu", "soc")
_TEMP_RANGE_MC = (-60_000, 200_000)


class TelemetryError(Exception):
    """A telemetry source cannot be set up (e.g. simulation not explicitly allowed)."""


@dataclass(frozen=True)
class Reading:
    """One reading of the device sensors, SPEC units, ``None`` where unknown."""

    battery_pct: int | None = None
    charging: bool | None = None
    cpu_temp_mc: int | None = None
    cpu_load_permille: int | None = None
    mem_available_kb: int | None = None

    def telemetry(self, net_latency_us: int | None) -> Telemetry:
        return Telemetry(
            battery_pct=self.battery_pct,
            charging=self.charging,
            cpu_temp_mc=self.cpu_temp_mc,
            cpu_load_permille=self.cpu_load_permille,
            net_latency_us=net_latency_us,
            mem_available_kb=self.mem_available_kb,
        )


class TelemetrySource(Protocol):
    name: str

    def read(self) -> Reading: ...


def pick_cpu_temperature(sensors: Mapping[str, Sequence[Any]]) -> tuple[str, float] | None:
    """(driver, °C) of the CPU reading to use from ``psutil.sensors_temperatures()``."""
    for driver in CPU_SENSOR_PREFERENCE:
        entries = [
            e
            for e in sensors.get(driver, ())
            if isinstance(e.current, (int, float)) and math.isfinite(e.current)
        ]
        if not entries:
            continue
        for wanted in PACKAGE_LABELS:
            for e in entries:
                if (e.label or "").strip().lower() == wanted:
                    return driver, float(e.current)
        return driver, float(max(e.current for e in entries))
    return None


def celsius_to_mc(celsius: float | None) -> int | None:
    """Milli-°C, or ``None`` for a value outside what any sensor could really read."""
    if celsius is None or not math.isfinite(celsius):
        return None
    mc = round(celsius * 1000)
    return mc if _TEMP_RANGE_MC[0] <= mc <= _TEMP_RANGE_MC[1] else None


class PsutilSource:
    """The device's own sensors through psutil."""

    name = "psutil"

    def __init__(self, psutil_module: Any = None) -> None:
        if psutil_module is None:
            import psutil

            psutil_module = psutil
        self._ps = psutil_module
        # The first cpu_percent() call only starts the measuring window (psutil docs).
        self._ps.cpu_percent(interval=None)
        self._primed_at = time.monotonic()
        self.sensor: str | None = None

    def read(self) -> Reading:
        return Reading(
            *self._battery(),
            cpu_temp_mc=self._temperature(),
            cpu_load_permille=self._load(),
            mem_available_kb=self._memory(),
        )

    def _battery(self) -> tuple[int | None, bool | None]:
        try:
            battery = self._ps.sensors_battery()
        except (AttributeError, NotImplementedError, OSError):
            return None, None
        if battery is None or battery.percent is None:
            return None, None
        pct = round(battery.percent)
        plugged = battery.power_plugged
        return (pct if 0 <= pct <= 100 else None), (None if plugged is None else bool(plugged))

    def _temperature(self) -> int | None:
        try:
            sensors = self._ps.sensors_temperatures()
        except (AttributeError, NotImplementedError, OSError):
            return None
        picked = pick_cpu_temperature(sensors or {})
        if picked is None:
            return None
        self.sensor = picked[0]
        return celsius_to_mc(picked[1])

    def _load(self) -> int | None:
        # A window shorter than a scheduler tick says nothing; report nothing yet.
        if time.monotonic() - self._primed_at < 0.05:
            time.sleep(0.1)
        percent = self._ps.cpu_percent(interval=None)
        self._primed_at = time.monotonic()
        if not isinstance(percent, (int, float)) or not math.isfinite(percent):
            return None
        return max(0, min(1000, round(percent * 10)))

    def _memory(self) -> int | None:
        try:
            return int(self._ps.virtual_memory().available) // 1024
        except (AttributeError, OSError):
            return None


# --- simulated telemetry -------------------------------------------------------------------

_SIM_FIELDS = ("battery_pct", "charging", "cpu_temp_mc", "cpu_load_permille", "mem_available_kb")
_NUMERIC = ("battery_pct", "cpu_temp_mc", "cpu_load_permille", "mem_available_kb")
_RANGES = {
    "battery_pct": (0, 100),
    "cpu_temp_mc": _TEMP_RANGE_MC,
    "cpu_load_permille": (0, 1000),
    "mem_available_kb": (0, 1 << 50),
}


@dataclass(frozen=True)
class Profile:
    """Timed steps; each step sets some values, which hold until a later step changes them."""

    steps: tuple[tuple[float, Reading, frozenset[str]], ...]
    interpolate: bool = False
    loop: bool = False

    def at(self, t: float) -> Reading:
        """The reading ``t`` seconds after the profile was loaded."""
        duration = self.steps[-1][0]
        if self.loop and duration > 0:
            t %= duration
        current = Reading()
        for i, (start, step, given) in enumerate(self.steps):
            if start > t:
                break
            current = replace(current, **{k: getattr(step, k) for k in given})
            if self.interpolate and i + 1 < len(self.steps):
                current = self._between(current, i, t)
        return current

    def _between(self, current: Reading, i: int, t: float) -> Reading:
        start = self.steps[i][0]
        end, nxt, given = self.steps[i + 1]
        if end <= t or end == start:
            return current
        frac = (t - start) / (end - start)
        changes = {}
        for k in _NUMERIC:
            a, b = getattr(current, k), getattr(nxt, k)
            if k in given and a is not None and b is not None:
                changes[k] = round(a + (b - a) * frac)
        return replace(current, **changes)


def parse_profile(data: Any) -> Profile:
    """A profile from decoded JSON/TOML; ``ValueError`` names what is wrong."""
    if not isinstance(data, Mapping):
        raise ValueError("a profile is an object with a list of steps")
    unknown = set(data) - {"steps", "step", "interpolate", "loop"}
    if unknown:
        raise ValueError(f"unknown profile keys: {', '.join(sorted(unknown))}")
    raw_steps = data.get("steps", data.get("step"))
    if not isinstance(raw_steps, list) or not raw_steps:
        raise ValueError("steps: a non-empty list is required")
    steps: list[tuple[float, Reading, frozenset[str]]] = []
    last_at = 0.0
    for n, raw in enumerate(raw_steps):
        where = f"steps[{n}]"
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: expected an object")
        at = raw.get("at_s", 0 if n == 0 else None)
        if isinstance(at, bool) or not isinstance(at, (int, float)) or at < last_at:
            raise ValueError(f"{where}.at_s: a number, not before the previous step")
        last_at = float(at)
        values: dict[str, Any] = {}
        for raw_key, raw_value in raw.items():
            if raw_key == "at_s":
                continue
            key, value = raw_key, raw_value
            if raw_key == "cpu_temp_c":
                key = "cpu_temp_mc"
                value = None if raw_value is None else _temp_c(where, raw_value)
            if key not in _SIM_FIELDS:
                raise ValueError(f"{where}.{key}: unknown telemetry field")
            values[key] = _check_value(f"{where}.{key}", key, value)
        steps.append((last_at, Reading(**values), frozenset(values)))
    for flag in ("interpolate", "loop"):
        if not isinstance(data.get(flag, False), bool):
            raise ValueError(f"{flag}: expected true or false")
    return Profile(tuple(steps), bool(data.get("interpolate")), bool(data.get("loop")))


def load_profile(path: Path) -> Profile:
    raw = path.read_bytes()
    try:
        data = tomllib.loads(raw.decode()) if path.suffix == ".toml" else json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(
            f"not valid {'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}"
        ) from None
    return parse_profile(data)


class SimulatedSource:
    """Telemetry played from a profile file, re-read whenever the file changes.

    Refuses to exist unless ``AEAMC_SIMULATED_TELEMETRY=1`` is in the environment: the
    config alone must never make a real device report invented numbers.
    """

    name = "simulated"

    def __init__(
        self,
        profile_path: Path,
        *,
        env: Mapping[str, str] = os.environ,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if env.get(SIMULATION_ENV) != "1":
            raise TelemetryError(
                f"simulated telemetry is configured but {SIMULATION_ENV}=1 is not set; "
                "it is for demos and tests only and must be enabled explicitly"
            )
        self.path = profile_path
        self._clock = clock
        self._stamp: tuple[int, int, int] | None = None
        try:
            self._profile = load_profile(profile_path)
        except (OSError, ValueError) as exc:
            raise TelemetryError(f"telemetry profile {profile_path}: {exc}") from None
        self._stamp = self._file_stamp()
        self._origin = clock()
        log.warning(
            "SIMULATED TELEMETRY from %s: battery, charging and temperature readings are "
            "invented by a profile, not measured on this device",
            profile_path,
        )

    def read(self) -> Reading:
        self._reload_if_changed()
        return self._profile.at(self._clock() - self._origin)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def _reload_if_changed(self) -> None:
        stamp = self._file_stamp()
        if stamp is None or stamp == self._stamp:
            return
        try:
            profile = load_profile(self.path)
        except (OSError, ValueError) as exc:
            log.error("telemetry profile %s: %s (keeping the previous profile)", self.path, exc)
            return
        self._profile, self._stamp, self._origin = profile, stamp, self._clock()
        log.info("telemetry profile %s reloaded", self.path)


def _temp_c(where: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where}.cpu_temp_c: expected a number")
    mc = celsius_to_mc(float(value))
    if mc is None:
        raise ValueError(f"{where}.cpu_temp_c: out of range")
    return mc


def _check_value(where: str, key: str, value: Any) -> Any:
    if value is None:
        return None
    if key == "charging":
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true, false or null")
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where}: expected an integer or null")
    lo, hi = _RANGES[key]
    if not lo <= value <= hi:
        raise ValueError(f"{where}: must be between {lo} and {hi}")
    return value


def make_source(
    kind: str, profile: Path | None, *, env: Mapping[str, str] = os.environ
) -> TelemetrySource:
    if kind == "simulated":
        assert profile is not None
        return SimulatedSource(profile, env=env)
    return PsutilSource()
