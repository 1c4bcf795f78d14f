"""The agent's HTTP API: signature checks, refusals with reasons, real work, spot-checks."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from aeamc.agent.daemon import Agent
from aeamc.shared.identity import SigningKey
from aeamc.shared.messages import Opening, parse_signed, sign
from aeamc.shared.proofs import FAILED, PASSED, split_output, verify_opening, verify_pot
from aeamc.shared.tasks.registry import discover

from .conftest import FAST_PARAMS, GOOD, eventually, write_profile
from .fakecoord import FakeCoordinator, agent_session, now_ms

SHA = discover().get("sha256-chain")


async def call(agent: Agent, method: str, path: str, body: Any = None, raw: bytes | None = None):
    async with agent_session(agent) as s:
        kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body}
        async with s.request(method, agent.endpoint() + path, **kwargs) as r:
            return r.status, await r.json()


@pytest.fixture
async def enrolled(fake_coordinator: FakeCoordinator, make_agent) -> Agent:
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: agent.link.pin is not None and fake_coordinator.heartbeats)
    return agent


async def run_task(fake_coordinator, agent, **kw) -> tuple[Any, Any, bytes]:
    a = fake_coordinator.assignment(agent.device_id, **kw)
    status, body = await call(agent, "POST", "/v1/assignments", a.to_dict())
    assert (status, body) == (202, {"accepted": True, "state": "running"})
    await eventually(
        lambda: any(p.task_id == a.task_id for p, _ in fake_coordinator.proofs), timeout=10
    )
    pot, output = next((p, o) for p, o in fake_coordinator.proofs if p.task_id == a.task_id)
    return a, pot, output


def judge_opening(agent, body, challenge, *, a, pot, output):
    """The coordinator's verdict on the agent's answer ``body`` to ``challenge``."""
    return verify_opening(
        parse_signed(body, Opening),
        challenge=challenge,
        pot=pot,
        outputs=split_output(output, a.chunks),
        kind=SHA,
        params=a.params,
        public_key=agent.key.public_key,
    )


async def test_real_task_proof_and_spot_check(fake_coordinator, enrolled) -> None:
    agent = enrolled
    a, pot, output = await run_task(fake_coordinator, agent, chunks=9, params=FAST_PARAMS)
    outputs = verify_pot(
        pot, output, public_key=agent.key.public_key, assignment=a, now_ms=now_ms()
    )
    assert outputs == [SHA.run_chunk(a.params, i, 9) for i in range(9)]
    meta = pot.execution_metadata
    assert meta.chunks == 9 and meta.cpu_time_ms >= 0 and meta.execution_time_ms >= 0
    # The trace is kept: a challenge is answered with an opening that verifies.
    challenge = fake_coordinator.challenge(agent.device_id, a.task_id, [8, 0, 3])
    status, body = await call(agent, "POST", "/v1/challenges", challenge.to_dict())
    assert status == 200
    verdict = judge_opening(agent, body, challenge, a=a, pot=pot, output=output)
    assert verdict.verdict == PASSED and verdict.reexecuted_chunks == 3
    # The same assignment again (a coordinator retry) is not run twice.
    status, body = await call(agent, "POST", "/v1/assignments", a.to_dict())
    assert (status, body) == (202, {"accepted": True, "state": "done"})


async def test_challenge_answered_after_a_restart(fake_coordinator, make_agent) -> None:
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: agent.link.pin is not None)
    a, _, output = await run_task(fake_coordinator, agent, chunks=3, params=FAST_PARAMS)
    await agent.stop()
    again = await make_agent(coordinator_url=fake_coordinator.url)
    assert again.device_id == agent.device_id
    challenge = fake_coordinator.challenge(agent.device_id, a.task_id, [2])
    status, body = await call(again, "POST", "/v1/challenges", challenge.to_dict())
    assert status == 200 and body["openings"][0]["output"] == split_output(output, 3)[2].hex()


async def test_demo_cheater_is_caught_by_spot_checks(fake_coordinator, make_agent) -> None:
    agent = await make_agent(coordinator_url=fake_coordinator.url, cheat_fraction=1.0)
    await eventually(lambda: agent.link.pin is not None)
    a, pot, output = await run_task(fake_coordinator, agent, chunks=4, params=FAST_PARAMS)
    # The proof is self-consistent (the cheat is in the outputs, not the commitment)...
    verify_pot(pot, output, public_key=agent.key.public_key, assignment=a, now_ms=now_ms())
    challenge = fake_coordinator.challenge(agent.device_id, a.task_id, [1])
    _, body = await call(agent, "POST", "/v1/challenges", challenge.to_dict())
    verdict = judge_opening(agent, body, challenge, a=a, pot=pot, output=output)
    # ...but re-executing an opened chunk exposes it.
    assert verdict.verdict == FAILED and "re-execution" in verdict.detail
    assert agent.runner.last.cheated_chunks == 4


async def test_unknown_task_challenge(fake_coordinator, enrolled) -> None:
    challenge = fake_coordinator.challenge(enrolled.device_id, "never-ran", [0])
    status, body = await call(enrolled, "POST", "/v1/challenges", challenge.to_dict())
    assert (status, body["error"]["code"]) == (404, "unknown_task")


async def test_challenge_index_out_of_range(fake_coordinator, enrolled) -> None:
    a, _, _ = await run_task(fake_coordinator, enrolled, chunks=2, params=FAST_PARAMS)
    challenge = fake_coordinator.challenge(enrolled.device_id, a.task_id, [5])
    status, body = await call(enrolled, "POST", "/v1/challenges", challenge.to_dict())
    assert (status, body["error"]["code"]) == (400, "invalid_message")


async def test_forged_and_misaddressed_requests(fake_coordinator, enrolled) -> None:
    agent = enrolled
    mallory = SigningKey.generate(os.urandom(32))
    forged = fake_coordinator.assignment(agent.device_id, key=mallory)
    status, body = await call(agent, "POST", "/v1/assignments", forged.to_dict())
    assert (status, body["error"]["code"]) == (403, "bad_signature")

    tampered = fake_coordinator.assignment(agent.device_id).to_dict() | {"chunks": 99}
    status, body = await call(agent, "POST", "/v1/assignments", tampered)
    assert (status, body["error"]["code"]) == (403, "bad_signature")

    other = fake_coordinator.assignment("00" * 16)
    status, body = await call(agent, "POST", "/v1/assignments", other.to_dict())
    assert (status, body["error"]["code"]) == (400, "wrong_device")

    rogue = FakeCoordinator(key=mallory).assignment(agent.device_id)
    status, body = await call(agent, "POST", "/v1/assignments", rogue.to_dict())
    assert status == 403 and body["error"]["code"] in ("bad_signature", "unknown_coordinator")

    # Signed by the right key but naming another coordinator id.
    body_ = fake_coordinator.assignment(agent.device_id).to_dict()
    body_["coordinator_id"] = mallory.device_id
    del body_["signature"]
    renamed = sign(type(fake_coordinator.assignment(agent.device_id)), body_, fake_coordinator.key)
    status, body = await call(agent, "POST", "/v1/assignments", renamed.to_dict())
    assert (status, body["error"]["code"]) == (403, "unknown_coordinator")

    forged_challenge = fake_coordinator.challenge(agent.device_id, "t", [0]).to_dict()
    forged_challenge["indices"] = [1]
    status, body = await call(agent, "POST", "/v1/challenges", forged_challenge)
    assert (status, body["error"]["code"]) == (403, "bad_signature")


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"not json", "invalid_json"),
        (b"[1, 2]", "invalid_message"),
        (b'{"type": "poa"}', "wrong_type"),
        (b'{"type": "assignment"}', "missing_field"),
    ],
)
async def test_bad_input_is_a_4xx_json_error(enrolled, raw: bytes, code: str) -> None:
    for path in ("/v1/assignments", "/v1/challenges"):
        status, body = await call(enrolled, "POST", path, raw=raw)
        assert status == 400
        assert body["error"]["code"] in (code, "wrong_type")
        assert body["error"]["message"]


async def test_bad_params_and_unknown_kind(fake_coordinator, enrolled) -> None:
    a = fake_coordinator.assignment(enrolled.device_id, params={"seed": "zz", "iterations": 1})
    status, body = await call(enrolled, "POST", "/v1/assignments", a.to_dict())
    assert (status, body["error"]["code"]) == (400, "bad_params")
    a = fake_coordinator.assignment(enrolled.device_id, kind="quantum-sort")
    status, body = await call(enrolled, "POST", "/v1/assignments", a.to_dict())
    assert (status, body["error"]["reason"]) == (409, "unknown_kind")


async def test_expired_and_busy(fake_coordinator, make_agent) -> None:
    agent = await make_agent(coordinator_url=fake_coordinator.url, max_queued_tasks=2)
    await eventually(lambda: agent.link.pin is not None)
    old = fake_coordinator.assignment(agent.device_id, issued_at=now_ms() - 120_000, ttl_ms=60_000)
    status, body = await call(agent, "POST", "/v1/assignments", old.to_dict())
    assert (status, body["error"]["code"], body["error"]["reason"]) == (409, "refused", "expired")
    slow = {"seed": "ef" * 32, "iterations": 50_000}
    first = fake_coordinator.assignment(agent.device_id, task_id="long", params=slow, chunks=50)
    assert await call(agent, "POST", "/v1/assignments", first.to_dict()) == (
        202,
        {"accepted": True, "state": "running"},
    )
    queued = fake_coordinator.assignment(agent.device_id, task_id="next")
    assert await call(agent, "POST", "/v1/assignments", queued.to_dict()) == (
        202,
        {"accepted": True, "state": "queued"},
    )
    third = fake_coordinator.assignment(agent.device_id, task_id="other")
    status, body = await call(agent, "POST", "/v1/assignments", third.to_dict())
    assert (status, body["error"]["reason"]) == (409, "busy")
    # Retrying the running or a queued assignment is idempotent, not "busy".
    status, body = await call(agent, "POST", "/v1/assignments", first.to_dict())
    assert (status, body["state"]) == (202, "running")
    status, body = await call(agent, "POST", "/v1/assignments", queued.to_dict())
    assert (status, body["state"]) == (202, "queued")
    assert [e.task_id for e in agent.queue.entries()] == ["long", "next"]
    # Health says the same.
    status, health = await call(agent, "GET", "/v1/health")
    assert (health["accepting_work"], health["reason"]) == (False, "busy")


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        (({"battery_pct": 10}, {}), "battery_low"),
        (({"cpu_temp_c": 80}, {}), "too_hot"),
        (({"charging": False}, {"run_only_when_charging": True}), "not_charging"),
    ],
)
async def test_energy_refusals(fake_coordinator, make_agent, tmp_path, case, reason) -> None:
    telemetry, config = case
    write_profile(tmp_path / "profile.json", **{**GOOD, **telemetry})
    agent = await make_agent(coordinator_url=fake_coordinator.url, **config)
    await eventually(lambda: agent.link.pin is not None)
    a = fake_coordinator.assignment(agent.device_id)
    status, body = await call(agent, "POST", "/v1/assignments", a.to_dict())
    assert (status, body["error"]["code"], body["error"]["reason"]) == (409, "refused", reason)


async def test_not_enrolled_yet(fake_coordinator, make_agent) -> None:
    agent = await make_agent(coordinator_url="https://127.0.0.1:9")  # nobody there
    a = fake_coordinator.assignment(agent.device_id)
    status, body = await call(agent, "POST", "/v1/assignments", a.to_dict())
    assert (status, body["error"]["code"]) == (403, "not_enrolled")


async def test_shutting_down(fake_coordinator, enrolled) -> None:
    enrolled.shutting_down = True
    a = fake_coordinator.assignment(enrolled.device_id)
    status, body = await call(enrolled, "POST", "/v1/assignments", a.to_dict())
    assert (status, body["error"]["reason"]) == (409, "shutting_down")
    _, health = await call(enrolled, "GET", "/v1/health")
    assert health["status"] == "shutting_down"


async def test_health_capabilities_and_unknown_routes(enrolled) -> None:
    status, health = await call(enrolled, "GET", "/v1/health")
    assert status == 200
    assert health["device_id"] == enrolled.device_id and health["accepting_work"] is True
    status, caps = await call(enrolled, "GET", "/v1/capabilities")
    assert status == 200 and caps["public_key"] == enrolled.key.public_key.hex()
    assert "sha256-chain" in caps["capabilities"]["kinds"]
    assert caps["capabilities"]["endpoint"] == enrolled.endpoint()
    status, body = await call(enrolled, "GET", "/v1/nothing")
    assert (status, body["error"]["code"]) == (404, "not_found")
    status, body = await call(enrolled, "GET", "/v1/assignments")
    assert (status, body["error"]["code"]) == (405, "method_not_allowed")
    status, body = await call(enrolled, "POST", "/v1/assignments", raw=b"x" * (5 << 20))
    assert (status, body["error"]["code"]) == (413, "body_too_large")


async def test_a_new_assignment_for_a_finished_task_runs_again(fake_coordinator, enrolled) -> None:
    first, _, _ = await run_task(fake_coordinator, enrolled, chunks=2, params=FAST_PARAMS)
    fake_coordinator.stored.clear()
    again = fake_coordinator.assignment(
        enrolled.device_id, task_id=first.task_id, chunks=2, params=FAST_PARAMS, ttl_ms=90_000
    )
    assert again != first
    status, body = await call(enrolled, "POST", "/v1/assignments", again.to_dict())
    assert (status, body["state"]) == (202, "running")
    await eventually(lambda: len(fake_coordinator.proofs) == 2)
    assert {p.task_id for p, _ in fake_coordinator.proofs} == {first.task_id}


def test_refusal_reasons_are_all_documented() -> None:
    from aeamc.agent.admission import REFUSAL_TEXT, TASK_REFUSALS
    from aeamc.agent.metrics import REFUSAL_REASONS

    assert set(REFUSAL_REASONS) == set(REFUSAL_TEXT) | set(TASK_REFUSALS)
    documented = (Path(__file__).parents[2] / "docs" / "agent.md").read_text()
    assert all(f"`{reason}`" in documented for reason in REFUSAL_REASONS)


async def scrape(agent: Agent) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    from prometheus_client.parser import text_string_to_metric_families

    async with agent_session(agent) as s, s.get(agent.endpoint() + "/metrics") as r:
        assert r.status == 200
        content_type, text = r.headers["Content-Type"], await r.text()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    return content_type, samples


async def test_metrics_count_tasks_refusals_and_deliveries(
    fake_coordinator, make_agent, tmp_path
) -> None:
    profile = tmp_path / "profile.json"
    write_profile(profile, **GOOD)
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: agent.link.pin is not None and fake_coordinator.heartbeats)
    content_type, before = await scrape(agent)
    assert content_type.startswith("text/plain; version=")
    # Every known label value is there from the start, at zero.
    assert before[("aeamc_agent_refusals_total", (("reason", "battery_low"),))] == 0
    assert before[("aeamc_agent_tasks_total", (("result", "queued"),))] == 0
    assert before[("aeamc_agent_accepting_work", ())] == 1
    assert ("aeamc_agent_build_info", (("version", agent_version()),)) in before

    await run_task(fake_coordinator, agent, chunks=3, params=FAST_PARAMS)
    await eventually(lambda: agent.outbox.count == 0)
    write_profile(profile, **{**GOOD, "battery_pct": 10})
    await eventually(lambda: agent.refusal_reason() == "battery_low")
    for task_id in ("low-1", "low-2"):
        a = fake_coordinator.assignment(agent.device_id, task_id=task_id)
        status, _ = await call(agent, "POST", "/v1/assignments", a.to_dict())
        assert status == 409

    _, after = await scrape(agent)
    assert after[("aeamc_agent_tasks_total", (("result", "queued"),))] == 1
    assert after[("aeamc_agent_proof_deliveries_total", (("result", "delivered"),))] == 1
    assert after[("aeamc_agent_refusals_total", (("reason", "battery_low"),))] == 2
    assert after[("aeamc_agent_refusals_total", (("reason", "too_hot"),))] == 0
    assert after[("aeamc_agent_heartbeats_total", (("result", "accepted"),))] >= 1
    assert after[("aeamc_agent_outbox_proofs", ())] == 0
    assert after[("aeamc_agent_queued_tasks", ())] == 0
    assert after[("aeamc_agent_accepting_work", ())] == 0
    # Nothing about the device's condition is exported: anyone on the LAN can scrape.
    assert not [name for name, _ in after if "battery" in name or "temp" in name]


def agent_version() -> str:
    from aeamc.agent import __version__

    return __version__


def _ambiguous(signed: dict, fault: str) -> bytes:
    """``signed`` as JSON with a fault a lax parser would take: a decoy first
    ``task_id`` member (the signed one comes after it and would win), or a NaN."""
    text = json.dumps(signed)
    if fault == "twice":
        return text.replace("{", '{"task_id": "decoy", ', 1).encode()
    return text.replace("{", '{"nonce": NaN, ', 1).encode()


@pytest.mark.parametrize(
    ("fault", "message"),
    [("twice", "'task_id' appears twice"), ("nan", "NaN is not a JSON number")],
)
async def test_an_ambiguous_body_is_refused_and_changes_nothing(
    fake_coordinator, enrolled, fault, message
) -> None:
    agent = enrolled
    a, _, _ = await run_task(fake_coordinator, agent, task_id="run", chunks=3, params=FAST_PARAMS)
    fresh = fake_coordinator.assignment(agent.device_id, task_id="fresh", params=FAST_PARAMS)
    challenge = fake_coordinator.challenge(agent.device_id, a.task_id, [0, 2])
    proofs = len(fake_coordinator.proofs)
    for path, signed in (
        ("/v1/assignments", fresh.to_dict()),
        ("/v1/challenges", challenge.to_dict()),
    ):
        status, body = await call(agent, "POST", path, raw=_ambiguous(signed, fault))
        assert (status, body["error"]["code"]) == (400, "invalid_json"), (path, body)
        assert message in body["error"]["message"]
    assert agent.queue.count == 0 and agent.runner.current is None
    assert agent.traces.assignment(fresh.task_id) is None
    assert sum(agent.metrics.refusals.values()) == 0
    await asyncio.sleep(0.3)
    assert len(fake_coordinator.proofs) == proofs
