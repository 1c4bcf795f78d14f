"""The energy policy: pure decisions, then a running agent driven by simulated telemetry."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from aeamc.agent.energy import (
    BATTERY_LOW,
    NOT_CHARGING,
    TOO_HOT,
    EnergyPolicy,
    EnergyThresholds,
    holds,
    reason,
    step,
)
from aeamc.agent.status import daemon_status
from aeamc.shared.messages import Telemetry
from aeamc.shared.proofs import verify_pot

from .conftest import GOOD, eventually, write_profile
from .fakecoord import coordinator_session

TH = EnergyThresholds()


def t(
    battery: int | None = 80, charging: bool | None = False, temp_c: float | None = 45
) -> Telemetry:
    return Telemetry(
        battery_pct=battery,
        charging=charging,
        cpu_temp_mc=None if temp_c is None else int(temp_c * 1000),
        cpu_load_permille=100,
        net_latency_us=None,
        mem_available_kb=None,
    )


def run(policy: EnergyPolicy, readings: list[Telemetry]) -> list[str | None]:
    out = []
    for r in readings:
        policy.update(r)
        out.append(policy.reason)
    return out


@pytest.mark.parametrize(
    ("reading", "expected"),
    [
        (t(), None),
        (t(battery=20), None),  # the floor itself is still allowed
        (t(battery=19), BATTERY_LOW),
        (t(battery=5, charging=True), None),  # charging overrides a low battery
        (t(temp_c=75), None),
        (t(temp_c=75.001), TOO_HOT),
        (t(battery=None, charging=None), None),  # no battery: on mains
        (t(temp_c=None), None),  # no sensor: cannot be judged by it
        (t(battery=10, temp_c=90), TOO_HOT),  # heat is reported first
    ],
)
def test_entry_thresholds(reading: Telemetry, expected: str | None) -> None:
    assert reason(step(frozenset(), reading, TH)) == expected


def test_only_when_charging() -> None:
    th = EnergyThresholds(run_only_when_charging=True)
    assert reason(step(frozenset(), t(battery=100, charging=False), th)) == NOT_CHARGING
    assert reason(step(frozenset(), t(battery=100, charging=None), th)) == NOT_CHARGING
    assert reason(step(frozenset(), t(battery=30, charging=True), th)) is None
    # A device without a battery is always on mains, so it is "charging" for this rule.
    assert reason(step(frozenset(), t(battery=None, charging=None), th)) is None


def test_battery_hysteresis_does_not_flap() -> None:
    policy = EnergyPolicy(TH)
    batteries = [30, 21, 19, 20, 21, 22, 24, 20, 24, 25, 24, 21, 20, 19]
    reasons = run(policy, [t(battery=b) for b in batteries])
    assert reasons == [None, None] + [BATTERY_LOW] * 7 + [None, None, None, None, BATTERY_LOW]


def test_temperature_hysteresis_does_not_flap() -> None:
    policy = EnergyPolicy(TH)
    temps = [60, 74, 76, 74, 72, 75, 71, 70, 72, 75, 76]
    reasons = run(policy, [t(temp_c=c) for c in temps])
    assert reasons == [None, None] + [TOO_HOT] * 5 + [None, None, None, TOO_HOT]


def test_conditions_have_independent_hysteresis() -> None:
    policy = EnergyPolicy(TH)
    # Hot with a 22 % battery: cooling down must not require the battery's resume level,
    # because the battery condition was never entered.
    assert run(policy, [t(battery=22, temp_c=80), t(battery=22, temp_c=69)]) == [TOO_HOT, None]
    # Both entered: both must clear.
    policy = EnergyPolicy(TH)
    got = run(
        policy,
        [t(battery=10, temp_c=80), t(battery=10, temp_c=60), t(battery=26, temp_c=60)],
    )
    assert got == [TOO_HOT, BATTERY_LOW, None]


def test_plugging_in_clears_low_battery_at_once() -> None:
    policy = EnergyPolicy(TH)
    assert run(policy, [t(battery=10), t(battery=10, charging=True), t(battery=11)]) == [
        BATTERY_LOW,
        None,
        BATTERY_LOW,  # unplugged again below the entry floor
    ]


def test_update_reports_changes_only() -> None:
    policy = EnergyPolicy(TH)
    assert policy.update(t()) is False
    assert policy.update(t(battery=10)) is True
    assert policy.update(t(battery=12)) is False
    assert policy.update(t(battery=50)) is True
    assert policy.allowed


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_battery_pct": 30, "resume_battery_pct": 25},
        {"min_battery_pct": 101},
        {"max_temp_c": 70, "resume_temp_c": 75},
        {"max_temp_c": 500},
        {"resume_temp_c": -100},
    ],
)
def test_thresholds_validated(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        EnergyThresholds(**kwargs)


def test_unknown_condition() -> None:
    with pytest.raises(ValueError):
        holds("sunny", t(), TH, active=False)


# --- a running agent driven through a simulated telemetry file ----------------------------

SLOW = {"seed": "cd" * 32, "iterations": 60_000}  # a few tens of ms per chunk


async def _post(url: str, body: dict) -> tuple[int, dict]:
    async with coordinator_session(body["coordinator_id"]) as s, s.post(url, json=body) as r:
        return r.status, await r.json()


async def test_simulated_drive_refuse_suspend_resume(
    fake_coordinator, make_agent, tmp_path
) -> None:
    profile: Path = tmp_path / "profile.json"
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    url = agent.endpoint() + "/v1/assignments"
    await eventually(lambda: fake_coordinator.heartbeats)

    # Low battery, not charging: refused with a machine reason.
    write_profile(profile, **{**GOOD, "battery_pct": 15})
    await eventually(lambda: agent.monitor.reason == BATTERY_LOW)
    status, body = await _post(
        url, fake_coordinator.assignment(agent.device_id, task_id="t1").to_dict()
    )
    assert (status, body["error"]["code"], body["error"]["reason"]) == (
        409,
        "refused",
        "battery_low",
    )
    # ...and the heartbeats tell the coordinator what the device reads.
    await eventually(lambda: fake_coordinator.heartbeats[-1].telemetry.battery_pct == 15)

    # Plugged in: accepted and run.
    write_profile(profile, **{**GOOD, "battery_pct": 15, "charging": True})
    await eventually(lambda: agent.monitor.allowed)
    a2 = fake_coordinator.assignment(agent.device_id, task_id="t2", params=SLOW, chunks=30)
    status, body = await _post(url, a2.to_dict())
    assert (status, body) == (202, {"accepted": True, "state": "running"})
    await eventually(lambda: agent.runner.current and agent.runner.current.chunks_done >= 2)

    # Overheating mid-task: suspended between chunks, progress stops, new work refused.
    write_profile(profile, **{**GOOD, "charging": True, "cpu_temp_c": 88})
    await eventually(lambda: agent.runner.current.suspended_reason == TOO_HOT)
    frozen = agent.runner.current.chunks_done
    status, body = await _post(
        url, fake_coordinator.assignment(agent.device_id, task_id="t3").to_dict()
    )
    assert body["error"]["reason"] == "too_hot"
    # Cooling to 72 °C is below the entry limit but above the resume limit: still suspended.
    write_profile(profile, **{**GOOD, "charging": True, "cpu_temp_c": 72})
    await asyncio.sleep(0.3)
    assert agent.runner.current.suspended_reason == TOO_HOT
    assert agent.runner.current.chunks_done == frozen
    status_doc = daemon_status(agent)
    assert status_doc["task"]["state"] == "suspended"
    assert status_doc["energy"]["reason"] == "too_hot"

    # Recovered: resumes from where it stopped and completes with a valid proof.
    write_profile(profile, **{**GOOD, "charging": True, "cpu_temp_c": 65})
    await eventually(lambda: fake_coordinator.proofs, timeout=15)
    pot, output = fake_coordinator.proofs[0]
    verify_pot(pot, output, public_key=agent.key.public_key, assignment=a2, now_ms=pot.timestamp)
    assert pot.execution_metadata.chunks == 30
    assert agent.runner.last.result == "queued"


async def test_suspended_task_abandoned_when_assignment_expires(
    fake_coordinator, make_agent, tmp_path
) -> None:
    profile: Path = tmp_path / "profile.json"
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: agent.link.pin is not None)
    a = fake_coordinator.assignment(agent.device_id, params=SLOW, chunks=200, ttl_ms=1500)
    status, _ = await _post(agent.endpoint() + "/v1/assignments", a.to_dict())
    assert status == 202
    write_profile(profile, **{**GOOD, "battery_pct": 5})
    await eventually(lambda: agent.runner.current and agent.runner.current.suspended_reason)
    await eventually(lambda: agent.runner.last is not None, timeout=5)
    assert agent.runner.last.result == "abandoned"
    assert "expired" in agent.runner.last.detail
    assert agent.outbox.count == 0 and not fake_coordinator.proofs
