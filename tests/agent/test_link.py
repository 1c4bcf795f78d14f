"""Enrollment, key pinning, heartbeats and their persisted seq, and the coordinator's answers."""

from __future__ import annotations

import itertools
import json
import os

from aeamc.agent.link import ACTIVE, PENDING, QUARANTINED, UNTRUSTED
from aeamc.agent.state import SeqCounter
from aeamc.shared.identity import SigningKey
from aeamc.shared.messages import Assignment, WorkReport

from .conftest import FAST_PARAMS, GOOD, eventually, write_profile
from .fakecoord import FakeCoordinator, Scripted, coordinator_session


async def test_enroll_pins_key_and_heartbeats_carry_telemetry(fake_coordinator, make_agent) -> None:
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: len(fake_coordinator.heartbeats) >= 3)
    enroll = fake_coordinator.enrollments[0]
    assert enroll.device_id == agent.device_id
    assert enroll.capabilities.endpoint == agent.endpoint()
    assert "sha256-chain" in enroll.capabilities.kinds
    assert enroll.token is None
    pin = json.loads((agent.config.state_dir / "coordinator.json").read_text())
    assert pin["coordinator_id"] == fake_coordinator.coordinator_id
    assert pin["public_key"] == fake_coordinator.public_key
    assert pin["cluster_id"] == 7 and pin["state"] == ACTIVE
    seqs = [h.seq for h in fake_coordinator.heartbeats]
    assert seqs == sorted(set(seqs))
    first, later = fake_coordinator.heartbeats[0], fake_coordinator.heartbeats[-1]
    assert first.telemetry.battery_pct == 80 and first.telemetry.cpu_temp_mc == 45_000
    # Latency is the round trip of an earlier real request, reported in the next heartbeat.
    assert later.telemetry.net_latency_us is not None and later.telemetry.net_latency_us > 0
    assert agent.link.flags == {"fast_heartbeats": True}
    assert agent.link.server_time_ms is not None


async def test_token_is_sent(fake_coordinator, make_agent) -> None:
    await make_agent(coordinator_url=fake_coordinator.url, enrollment_token="t0k3n-abc")
    await eventually(lambda: fake_coordinator.enrollments)
    assert fake_coordinator.enrollments[0].token == "t0k3n-abc"


async def test_seq_survives_restarts_and_is_persisted_first(fake_coordinator, make_agent) -> None:
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: len(fake_coordinator.heartbeats) >= 2)
    await agent.stop()
    last = fake_coordinator.heartbeats[-1].seq
    assert SeqCounter(agent.config.state_dir).last >= last
    n = len(fake_coordinator.heartbeats)
    await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: len(fake_coordinator.heartbeats) >= n + 2)
    # The fake coordinator refuses non-increasing seqs with 409 replay: none were needed.
    assert fake_coordinator.heartbeats[n].seq > last


async def test_replay_moves_the_counter_past_the_coordinator(fake_coordinator, make_agent) -> None:
    agent = await make_agent(coordinator_url=fake_coordinator.url, start=False)
    # The coordinator has seen seq 500 (say, the state dir was restored from a backup).
    fake_coordinator.last_seq[agent.device_id] = 500
    await agent.start()
    await eventually(lambda: fake_coordinator.heartbeats)
    assert fake_coordinator.heartbeats[0].seq == 501
    # Without last_seq in the error, the counter jumps to the clock.
    fake_coordinator.queue(
        "/v1/heartbeats", Scripted(409, {"error": {"code": "replay", "message": "x"}})
    )
    n = len(fake_coordinator.heartbeats)
    await eventually(lambda: len(fake_coordinator.heartbeats) > n)
    assert fake_coordinator.heartbeats[-1].seq > 1_600_000_000_000


async def test_pending_then_approved(fake_coordinator, make_agent) -> None:
    fake_coordinator.enroll_state = PENDING
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: len(fake_coordinator.enrollments) >= 3)  # re-sent while pending
    assert agent.link.state == PENDING and not fake_coordinator.heartbeats
    # No certificate while pending: every enrollment asks again, with the CSR.
    assert not fake_coordinator.issued and agent.link.tls.cert is None
    assert all(e.csr is not None for e in fake_coordinator.enrollments)
    assert agent.link.tls.ca_fingerprint == fake_coordinator.ca.fingerprint  # pinned meanwhile
    fake_coordinator.enroll_state = ACTIVE
    await eventually(lambda: fake_coordinator.heartbeats)
    assert agent.link.state == ACTIVE
    assert (
        len(fake_coordinator.issued) == 1
        and fake_coordinator.client_serials[-1] == fake_coordinator.issued[0]
    )


async def test_not_enrolled_triggers_reenrollment(fake_coordinator, make_agent) -> None:
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: fake_coordinator.heartbeats)
    n = len(fake_coordinator.enrollments)
    fake_coordinator.device_keys.clear()  # the coordinator lost (or erased) the device
    await eventually(lambda: len(fake_coordinator.enrollments) > n)
    await eventually(lambda: agent.link.state == ACTIVE and len(fake_coordinator.heartbeats) > 1)


async def refused_heartbeat(fake_coordinator, make_agent, code: str, message: str, state: str):
    """An agent that got going, then had a heartbeat refused with ``code``: now in ``state``."""
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: fake_coordinator.heartbeats)
    fake_coordinator.queue(
        "/v1/heartbeats", Scripted(403, {"error": {"code": code, "message": message}})
    )
    await eventually(lambda: agent.link.state == state)
    return agent


async def test_pending_heartbeat_answer(fake_coordinator, make_agent) -> None:
    agent = await refused_heartbeat(fake_coordinator, make_agent, "pending", "x", PENDING)
    await eventually(lambda: agent.link.state == ACTIVE)  # re-enrolled: active again


async def test_quarantine_stops_work(fake_coordinator, make_agent) -> None:
    agent = await refused_heartbeat(
        fake_coordinator, make_agent, "quarantined", "bad proofs", QUARANTINED
    )
    assert agent.refusal_reason() == "quarantined"
    # A later accepted heartbeat reports the state the coordinator holds.
    fake_coordinator.enroll_state = QUARANTINED
    await eventually(lambda: len(fake_coordinator.heartbeats) >= 3)
    assert agent.refusal_reason() == "quarantined"
    fake_coordinator.enroll_state = ACTIVE
    await eventually(lambda: agent.link.state == ACTIVE)
    assert agent.refusal_reason() is None


async def test_a_different_coordinator_key_is_refused(fake_coordinator, make_agent) -> None:
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: fake_coordinator.heartbeats)
    await agent.stop()
    await fake_coordinator.stop()
    impostor = await FakeCoordinator(key=SigningKey.generate(os.urandom(32))).start(
        fake_coordinator.port
    )
    try:
        again = await make_agent(coordinator_url=impostor.url)
        await eventually(lambda: again.link.state == UNTRUSTED)
        assert "pinned" in again.link.last_error
        assert not impostor.heartbeats
        assert (
            json.loads((again.config.state_dir / "coordinator.json").read_text())["coordinator_id"]
            == fake_coordinator.coordinator_id
        )
        assert again.refusal_reason() == "quarantined"
    finally:
        await impostor.stop()


async def test_malformed_enrollment_answers_are_not_trusted(fake_coordinator, make_agent) -> None:
    bad = [
        Scripted(202, ["not", "an", "object"]),
        Scripted(202, {"device_id": "x", "state": "active"}),
        Scripted(
            202,
            {
                "device_id": "00" * 16,
                "state": "active",
                "coordinator_id": fake_coordinator.coordinator_id,
                "coordinator_public_key": fake_coordinator.public_key,
            },
        ),
        Scripted(
            202,
            {
                "state": "active",
                "coordinator_id": "11" * 16,  # does not fit the key
                "coordinator_public_key": fake_coordinator.public_key,
            },
        ),
    ]
    for answer in bad:
        fake_coordinator.queue("/v1/enroll", answer)
    agent = await make_agent(coordinator_url=fake_coordinator.url, start=False)
    await agent.start()
    await eventually(lambda: agent.link.state == UNTRUSTED)
    assert agent.link.pin is None


async def test_backoff_while_the_coordinator_is_away(fake_coordinator, make_agent) -> None:
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: fake_coordinator.heartbeats)
    for _ in range(3):
        fake_coordinator.queue(
            "/v1/heartbeats", Scripted(503, {"error": {"code": "down", "message": ""}})
        )
    await eventually(lambda: agent.link.backoff.failures >= 2)
    assert "503" in (agent.link.last_error or "")
    await eventually(lambda: agent.link.backoff.failures == 0 and agent.link.last_error is None)
    # Refused connections back off too, and the link recovers when the coordinator returns.
    await fake_coordinator.stop()
    await eventually(lambda: agent.link.last_error and "unreachable" in agent.link.last_error)
    n = len(fake_coordinator.heartbeats)
    await fake_coordinator.start(fake_coordinator.port)
    await eventually(lambda: len(fake_coordinator.heartbeats) > n, timeout=5)


async def test_a_node_that_cannot_serve_is_left_for_the_next(fake_coordinator, make_agent) -> None:
    """With several nodes configured, a 5xx answer to a heartbeat (that node has lost its
    database, say, while the agent still reaches it) moves the agent to the next node,
    as no answer at all does; with one, it stays and backs off."""
    other = f"https://localhost:{fake_coordinator.port}"
    agent = await make_agent(coordinator_url=f"{fake_coordinator.url},{other}")
    await eventually(lambda: fake_coordinator.heartbeats)
    assert agent.link.locator.url == fake_coordinator.url
    fake_coordinator.queue(
        "/v1/heartbeats", Scripted(503, {"error": {"code": "unavailable", "message": ""}})
    )
    await eventually(lambda: agent.link.locator.url == other)
    n = len(fake_coordinator.heartbeats)
    await eventually(lambda: len(fake_coordinator.heartbeats) > n)  # served there


async def test_other_refusals_are_logged_and_retried(fake_coordinator, make_agent, caplog) -> None:
    await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: fake_coordinator.heartbeats)
    n = len(fake_coordinator.heartbeats)
    fake_coordinator.queue(
        "/v1/heartbeats", Scripted(400, {"error": {"code": "stale_message", "message": "clock"}})
    )
    await eventually(lambda: any("stale_message" in r.getMessage() for r in caplog.records))
    await eventually(lambda: len(fake_coordinator.heartbeats) > n)


def _median_gap_ms(heartbeats: list) -> float:
    gaps = sorted(b.timestamp - a.timestamp for a, b in itertools.pairwise(heartbeats))
    return gaps[len(gaps) // 2]


async def test_adaptive_heartbeat_flag_slows_idle_battery_devices(make_agent) -> None:
    from aeamc.agent.link import ADAPTIVE_HEARTBEAT

    from .conftest import write_profile

    off = await FakeCoordinator(flags={ADAPTIVE_HEARTBEAT: False}).start()
    on = await FakeCoordinator(flags={ADAPTIVE_HEARTBEAT: True}).start()
    try:
        # Off: the configured 0.2 s interval.
        a = await make_agent(coordinator_url=off.url, subdir="off")
        await eventually(lambda: len(off.heartbeats) >= 7, timeout=8)
        off_gap = _median_gap_ms(off.heartbeats[1:])
        assert a.link.heartbeat_interval_s() == a.config.heartbeat_interval_s

        # On, idle, on battery (the profile says not charging): twice the interval.
        b = await make_agent(coordinator_url=on.url, subdir="on")
        await eventually(lambda: len(on.heartbeats) >= 7, timeout=8)
        assert b.link.flags == {ADAPTIVE_HEARTBEAT: True}
        # At least twice the interval (a busy machine only lengthens gaps), and longer than
        # the same agent's gaps with the flag off, measured under the same load.
        on_gap = _median_gap_ms(on.heartbeats[1:])
        assert on_gap >= 340 and on_gap > off_gap
        assert b.link.heartbeat_interval_s() == 2 * b.config.heartbeat_interval_s

        # With work to do, the configured interval again.
        b.link.has_work = lambda: True
        assert b.link.heartbeat_interval_s() == b.config.heartbeat_interval_s
        b.link.has_work = lambda: False

        # Charging: no energy to save, the configured interval.
        write_profile(
            b.config.telemetry_profile,
            battery_pct=80,
            charging=True,
            cpu_temp_c=45,
            cpu_load_permille=100,
        )
        await eventually(lambda: b.monitor.telemetry().charging is True, timeout=5)
        assert b.link.heartbeat_interval_s() == b.config.heartbeat_interval_s
        seen = len(on.heartbeats)
        await eventually(lambda: len(on.heartbeats) >= seen + 6, timeout=8)
        assert _median_gap_ms(on.heartbeats[seen + 1 :]) < 300
    finally:
        await off.stop()
        await on.stop()


def test_adaptive_heartbeat_keeps_devices_eligible() -> None:
    from types import SimpleNamespace

    from aeamc.agent.link import ADAPTIVE_HEARTBEAT, ADAPTIVE_MAX_INTERVAL_S, CoordinatorLink

    def interval(configured: float, charging: bool | None, flags: dict[str, bool]) -> float:
        link = SimpleNamespace(
            config=SimpleNamespace(heartbeat_interval_s=configured),
            flags=flags,
            has_work=lambda: False,
            monitor=SimpleNamespace(telemetry=lambda: SimpleNamespace(charging=charging)),
        )
        return CoordinatorLink.heartbeat_interval_s(link)  # type: ignore[arg-type]

    on = {ADAPTIVE_HEARTBEAT: True}
    assert interval(10, False, on) == 20
    assert interval(30, False, on) == ADAPTIVE_MAX_INTERVAL_S == 50  # the default, capped
    assert interval(90, False, on) == 90  # never faster than configured
    assert interval(10, None, on) == 10  # mains or unknown: nothing to save
    assert interval(10, False, {ADAPTIVE_HEARTBEAT: False}) == 10
    assert interval(10, False, {}) == 10


async def test_a_rate_limit_is_waited_out(fake_coordinator, make_agent) -> None:
    from aeamc.agent.client import Reply

    agent = await make_agent(coordinator_url=fake_coordinator.url)
    limited = {"error": {"code": "rate_limited", "message": "slow down", "retry_after_s": 7}}
    assert agent.link._refused("heartbeat", Reply(429, limited, 0)) >= 7.0
    # Nonsense in the hint is ignored: the usual backoff applies.
    bogus = {"error": {"code": "rate_limited", "message": "", "retry_after_s": True}}
    assert agent.link._refused("heartbeat", Reply(429, bogus, 0)) <= agent.config.retry_max_s


async def test_a_coordinator_at_capacity_is_left_alone_as_long_as_it_asks(
    fake_coordinator, make_agent
) -> None:
    """503 ``overloaded`` with a ``Retry-After`` header (and no hint in the body): the
    next heartbeat waits at least that long, and no longer than half of it again."""
    from aeamc.agent.client import Reply

    agent = await make_agent(coordinator_url=fake_coordinator.url)
    shed = {"error": {"code": "overloaded", "message": "at capacity"}}
    for _ in range(20):
        delay = agent.link._refused("heartbeat", Reply(503, shed, 0, retry_after_header=9))
        assert 9.0 <= delay <= max(13.5, agent.config.retry_max_s)
    # The longer of the header and the body's hint.
    hinted = {"error": {"code": "overloaded", "message": "", "retry_after_s": 12}}
    assert agent.link._refused("heartbeat", Reply(503, hinted, 0, retry_after_header=9)) >= 12


async def test_an_ambiguous_heartbeat_answer_changes_nothing(
    fake_coordinator, make_agent, caplog
) -> None:
    """A 202 naming the device's state twice (``active``, then ``erased``) is refused as
    no answer: the device is not erased, its pin keeps its state, and it goes on."""
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: fake_coordinator.heartbeats and agent.link.state == ACTIVE)
    raw = b'{"state": "active", "flags": {}, "state": "erased"}'
    fake_coordinator.queue("/v1/heartbeats", Scripted(202, raw=raw))
    await eventually(lambda: not fake_coordinator.script["/v1/heartbeats"])
    n = len(fake_coordinator.heartbeats)
    await eventually(lambda: len(fake_coordinator.heartbeats) >= n + 2)
    assert agent.link.state == ACTIVE and agent.link.pin.state == ACTIVE
    assert agent.metrics.heartbeats["unreachable"] >= 1
    assert any("'state' appears twice" in r.getMessage() for r in caplog.records)


async def _assign(endpoint: str, a: Assignment) -> int:
    async with (
        coordinator_session(a.coordinator_id) as s,
        s.post(endpoint + "/v1/assignments", json=a.to_dict()) as r,
    ):
        return r.status


async def test_heartbeats_report_the_work_in_hand_to_a_coordinator_that_reads_it(
    fake_coordinator, make_agent, tmp_path
) -> None:
    """The running task's chunks done and the queued tasks' 0 go with each heartbeat, but
    only while the coordinator's answers say it reads them; a refusal naming ``work``
    stops them at once, without an error or a wait; an idle device sends none."""
    fake_coordinator.reads_work = False
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: agent.link.pin is not None and fake_coordinator.heartbeats)
    url = agent.endpoint()
    slow = {"seed": "ce" * 32, "iterations": 600_000}  # a quarter of a second per chunk
    running = fake_coordinator.assignment(agent.device_id, task_id="a", params=slow, chunks=12)
    waiting = fake_coordinator.assignment(agent.device_id, task_id="b", params=FAST_PARAMS)
    assert [await _assign(url, a) for a in (running, waiting)] == [202, 202]
    await eventually(
        lambda: agent.runner.current and agent.runner.current.chunks_done >= 1, timeout=30
    )
    # Too hot: the task waits between chunks, so its count holds still while we look.
    write_profile(tmp_path / "profile.json", **{**GOOD, "cpu_temp_c": 90})
    await eventually(lambda: agent.runner.current.suspended_reason == "too_hot")
    done = agent.runner.current.chunks_done
    assert agent.runner.work_in_hand() == [WorkReport("a", done), WorkReport("b", 0)]

    n = len(fake_coordinator.heartbeats)
    await eventually(lambda: len(fake_coordinator.heartbeats) >= n + 2)
    assert all(h.work is None for h in fake_coordinator.heartbeats)  # never said it reads it

    fake_coordinator.reads_work = True
    n = len(fake_coordinator.heartbeats)
    reported = await eventually(
        lambda: next((h.work for h in fake_coordinator.heartbeats[n:] if h.work), None)
    )
    assert reported == (WorkReport("a", done), WorkReport("b", 0))

    # The coordinator (downgraded, say) no longer knows the member and refuses it.
    fake_coordinator.reads_work = False
    asked = len(fake_coordinator.requests)
    n = len(fake_coordinator.heartbeats)
    unknown = {"code": "unknown_field", "message": "work: unknown field", "field": "work"}
    fake_coordinator.queue("/v1/heartbeats", Scripted(400, {"error": unknown}))
    await eventually(lambda: len(fake_coordinator.heartbeats) >= n + 2)
    sent = [body for path, body in fake_coordinator.requests[asked:] if path == "/v1/heartbeats"]
    assert "work" in sent[0]  # the refused one
    assert all(h.work is None for h in fake_coordinator.heartbeats[n:])
    assert agent.link.state == ACTIVE and agent.link.last_error is None

    # Cool again: both tasks finish; an idle device's heartbeat carries no work.
    fake_coordinator.reads_work = True
    write_profile(tmp_path / "profile.json", **GOOD)
    await eventually(lambda: len(fake_coordinator.proofs) == 2, timeout=60)
    n = len(fake_coordinator.heartbeats)
    await eventually(lambda: len(fake_coordinator.heartbeats) >= n + 3)
    assert agent.runner.work_in_hand() == []
    assert fake_coordinator.heartbeats[-1].work is None
