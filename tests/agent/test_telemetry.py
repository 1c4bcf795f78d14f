"""Telemetry: real sensors never invent values; simulation only when explicitly enabled."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest

from aeamc.agent.telemetry import (
    SIMULATION_ENV,
    PsutilSource,
    Reading,
    SimulatedSource,
    TelemetryError,
    celsius_to_mc,
    load_profile,
    make_source,
    parse_profile,
    pick_cpu_temperature,
)

from .conftest import write_profile

Temp = namedtuple("Temp", "label current high critical")
Battery = namedtuple("Battery", "percent secsleft power_plugged")
Memory = namedtuple("Memory", "available total")


class FakePsutil:
    def __init__(self, *, battery: Any = None, temps: Any = None, load: float = 12.5) -> None:
        self.battery, self.temps, self.load = battery, temps, load

    def sensors_battery(self) -> Any:
        if isinstance(self.battery, Exception):
            raise self.battery
        return self.battery

    def sensors_temperatures(self) -> Any:
        if isinstance(self.temps, Exception):
            raise self.temps
        return self.temps if self.temps is not None else {}

    def cpu_percent(self, interval: Any = None) -> float:
        return self.load

    def virtual_memory(self) -> Memory:
        return Memory(2048 * 1024, 4096 * 1024)


def test_no_battery_no_sensor_reports_null() -> None:
    reading = PsutilSource(FakePsutil()).read()
    assert reading.battery_pct is None and reading.charging is None
    assert reading.cpu_temp_mc is None
    assert reading.cpu_load_permille == 125
    assert reading.mem_available_kb == 2048


def test_battery_and_temperature_read_in_spec_units() -> None:
    ps = FakePsutil(
        battery=Battery(57.6, 3600, True),
        temps={"coretemp": [Temp("Package id 0", 61.25, 80, 100), Temp("Core 0", 70, 80, 100)]},
    )
    reading = PsutilSource(ps).read()
    assert (reading.battery_pct, reading.charging, reading.cpu_temp_mc) == (58, True, 61250)


def test_sensor_errors_are_unknown_not_zero() -> None:
    ps = FakePsutil(battery=OSError("gone"), temps=NotImplementedError())
    reading = PsutilSource(ps).read()
    assert reading.battery_pct is None and reading.cpu_temp_mc is None
    ps = FakePsutil(battery=Battery(None, 0, None), load=float("nan"))
    reading = PsutilSource(ps).read()
    assert reading.battery_pct is None and reading.charging is None
    assert reading.cpu_load_permille is None


@pytest.mark.parametrize(
    ("sensors", "expected"),
    [
        ({}, None),
        ({"nvme": [Temp("Composite", 40, 0, 0)]}, None),  # a disk is not the CPU
        ({"acpitz": [Temp("", 30, 0, 0)], "k10temp": [Temp("Tctl", 55, 0, 0)]}, ("k10temp", 55)),
        ({"coretemp": [Temp("Core 0", 50, 0, 0), Temp("Core 1", 58, 0, 0)]}, ("coretemp", 58)),
        ({"cpu_thermal": [Temp("", 47.2, 0, 0)]}, ("cpu_thermal", 47.2)),
        ({"zenpower": [Temp("Tccd1", 50, 0, 0), Temp("Tdie", 52, 0, 0)]}, ("zenpower", 52)),
        ({"acpitz": [Temp("", 27.8, 0, 0)]}, ("acpitz", 27.8)),
        (
            {"coretemp": [Temp("Core 0", float("nan"), 0, 0)], "acpitz": [Temp("", 30, 0, 0)]},
            ("acpitz", 30),
        ),
    ],
)
def test_cpu_sensor_choice(sensors: dict, expected: tuple | None) -> None:
    assert pick_cpu_temperature(sensors) == expected


def test_celsius_to_mc_refuses_nonsense() -> None:
    assert celsius_to_mc(45.5) == 45500
    assert celsius_to_mc(-300) is None
    assert celsius_to_mc(float("inf")) is None
    assert celsius_to_mc(None) is None


def test_real_source_on_this_machine_invents_nothing() -> None:
    import psutil

    reading = make_source("psutil", None).read()
    if psutil.sensors_battery() is None:
        assert reading.battery_pct is None and reading.charging is None
    if not psutil.sensors_temperatures():
        assert reading.cpu_temp_mc is None
    assert reading.mem_available_kb and reading.mem_available_kb > 0


def test_status_json_reports_null_battery_on_this_machine(tmp_path: Path) -> None:
    """The real command, as an owner runs it, against an initialised state dir."""
    import psutil

    config = tmp_path / "agent.toml"
    env = {k: v for k, v in os.environ.items() if k != SIMULATION_ENV}
    cmd = [sys.executable, "-m", "aeamc.agent.cli", "--config", str(config)]
    subprocess.run([*cmd, "init", "--state-dir", str(tmp_path / "s")], check=True, env=env)
    out = subprocess.run(
        [*cmd, "status", "--json"], capture_output=True, text=True, env=env, check=False
    )
    assert out.returncode == 0, out.stderr
    status = json.loads(out.stdout)
    assert status["telemetry_source"] == "psutil"
    assert psutil.sensors_battery() is None  # this machine has none: see the brief
    assert status["telemetry"]["battery_pct"] is None
    assert status["telemetry"]["charging"] is None
    assert status["telemetry"]["net_latency_us"] is None  # never measured yet
    assert status["eps"] is not None  # computed from what is known, unknowns at 0.5


# --- simulated telemetry --------------------------------------------------------------------


def test_simulation_refused_without_env(tmp_path: Path) -> None:
    profile = tmp_path / "p.json"
    write_profile(profile, battery_pct=50)
    with pytest.raises(TelemetryError, match=SIMULATION_ENV):
        SimulatedSource(profile, env={})
    with pytest.raises(TelemetryError, match=SIMULATION_ENV):
        SimulatedSource(profile, env={SIMULATION_ENV: "yes"})
    with pytest.raises(TelemetryError, match=SIMULATION_ENV):
        make_source("simulated", profile, env={})


def test_simulation_logs_a_loud_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    profile = tmp_path / "p.json"
    write_profile(profile, battery_pct=50)
    SimulatedSource(profile, env={SIMULATION_ENV: "1"})
    assert any(
        r.levelname == "WARNING" and "SIMULATED TELEMETRY" in r.getMessage() for r in caplog.records
    )


def test_profile_steps_drain_and_reload(tmp_path: Path) -> None:
    profile = tmp_path / "p.json"
    write_profile(
        profile,
        steps=[
            {"at_s": 0, "battery_pct": 80, "charging": False, "cpu_temp_c": 40},
            {"at_s": 10, "battery_pct": 15},
            {"at_s": 20, "charging": True, "cpu_temp_c": 90},
        ],
    )
    now = [0.0]
    source = SimulatedSource(profile, env={SIMULATION_ENV: "1"}, clock=lambda: now[0])
    assert source.read() == Reading(80, False, 40_000, None, None)
    now[0] = 12
    assert source.read() == Reading(15, False, 40_000, None, None)
    now[0] = 25
    assert source.read() == Reading(15, True, 90_000, None, None)
    # Rewriting the file restarts the profile from its first step.
    write_profile(profile, battery_pct=55, cpu_load_permille=300)
    assert source.read() == Reading(55, None, None, 300, None)
    # A broken rewrite keeps the previous profile (and says so in the log).
    profile.write_text("{not json")
    assert source.read() == Reading(55, None, None, 300, None)


def test_profile_interpolates_and_loops(tmp_path: Path) -> None:
    p = parse_profile(
        {
            "interpolate": True,
            "loop": True,
            "steps": [
                {"at_s": 0, "battery_pct": 80, "mem_available_kb": 1000},
                {"at_s": 100, "battery_pct": 20},
            ],
        }
    )
    assert p.at(0).battery_pct == 80
    assert p.at(50).battery_pct == 50
    assert p.at(50).mem_available_kb == 1000
    assert p.at(150).battery_pct == 50  # looped


def test_toml_profile(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("[[steps]]\nat_s = 0\nbattery_pct = 42\ncharging = true\n")
    assert load_profile(path).at(0) == Reading(42, True, None, None, None)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "object"),
        ({"steps": []}, "non-empty"),
        ({"steps": [{"battery_pct": 101}]}, "between"),
        ({"steps": [{"battery_pct": 1.5}]}, "integer"),
        ({"steps": [{"charging": 1}]}, "true, false"),
        ({"steps": [{"sunshine": 3}]}, "unknown telemetry field"),
        ({"steps": [{"at_s": 5}, {"at_s": 1}]}, "at_s"),
        ({"steps": ["x"]}, "expected an object"),
        ({"steps": [{"cpu_temp_c": "hot"}]}, "number"),
        ({"steps": [{"cpu_temp_c": 999}]}, "out of range"),
        ({"steps": [{}], "speed": 2}, "unknown profile keys"),
        ({"steps": [{}], "loop": "yes"}, "loop"),
    ],
)
def test_bad_profiles(data: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_profile(data)


def test_unreadable_profile_is_a_telemetry_error(tmp_path: Path) -> None:
    with pytest.raises(TelemetryError, match=r"p\.json"):
        SimulatedSource(tmp_path / "p.json", env={SIMULATION_ENV: "1"})
    (tmp_path / "bad.json").write_text("[")
    with pytest.raises(TelemetryError, match="not valid JSON"):
        SimulatedSource(tmp_path / "bad.json", env={SIMULATION_ENV: "1"})
