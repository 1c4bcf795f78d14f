"""Cheaters who do not cooperate with verification, against a real coordinator.

Each test asserts what the client sees (output delivered or not, its verification state)
and what the operator sees (device state, credit, task state). Tasks have as many chunks
as a challenge opens (k = 4), so every check opens the faked chunk."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from tests.adversary.conftest import QUICK_CHECKS, CoordinatorFactory
from tests.adversary.hostile import HostileDevice, Watcher, honest_trace
from tests.support.coordinator import CoordinatorProcess, merge
from tests.support.device import SimDevice

TASK = {"kind": "sha256-chain", "params": {"seed": "cd" * 32, "iterations": 50}, "chunks": 4}
MakeCoordinator = CoordinatorFactory


def submit(coordinator: CoordinatorProcess, **over: Any) -> str:
    return coordinator.submit_task({**TASK, **over})


def device_view(coordinator: CoordinatorProcess, device: SimDevice) -> dict[str, Any]:
    return coordinator.read(f"/v1/devices/{device.device_id}")  # type: ignore[no-any-return]


def proof_of(view: dict[str, Any], device: SimDevice) -> dict[str, Any]:
    return next(p for p in view["proofs"] if p["device_id"] == device.device_id)


async def wait(predicate: Callable[[], Any], timeout: float = 45) -> Any:
    for _ in range(int(timeout / 0.1)):
        if result := predicate():
            return result
        await asyncio.sleep(0.1)
    raise AssertionError("condition not met in time")


async def redo_honestly(
    coordinator: CoordinatorProcess, watcher: Watcher, token: str
) -> tuple[SimDevice, dict[str, Any]]:
    """An honest device joins; the re-queued task completes with its verified output."""
    honest = await SimDevice(coordinator.url).start()
    await honest.join(token)
    done = await watcher.until(
        lambda v: v["state"] == "completed" and v["verification"]["state"] == "verified"
    )
    assert done["output"] == honest.traces[watcher.task_id].output.hex()
    return honest, done


async def test_declining_cheater_is_quarantined_and_its_task_redone(
    make_coordinator: MakeCoordinator,
) -> None:
    """Fakes chunk 0 and answers "unknown task" when it is asked: a refusal of a proof it
    signed, so its credit is void at once, its task re-runs, and it is quarantined."""
    coordinator = make_coordinator()
    token = coordinator.issue_token("enroll", uses=20)
    cheater = await HostileDevice(
        coordinator.url, cheat_chunks=frozenset({0}), on_challenge="decline"
    ).start()
    honest = None
    try:
        await cheater.join(token)
        watcher = Watcher(coordinator, submit(coordinator), coordinator.token("client"))
        faked = await wait(lambda: cheater.traces.get(watcher.task_id))
        dev = await wait(
            lambda: (d := device_view(coordinator, cheater))["state"] == "quarantined" and d
        )
        assert "unknown task" in dev["state_reason"]
        assert dev["record"]["unanswered"] == 1
        view = watcher.view()
        assert view["state"] == "queued" and view["output"] is None
        assert view["verification"]["state"] == "void"
        assert proof_of(view, cheater)["credit"] == "void"
        assert proof_of(view, cheater)["verification"]["state"] == "void"
        honest, done = await redo_honestly(coordinator, watcher, token)
        assert done["verification"]["by"] == "spot-check"
        assert not watcher.ever_verified_with(faked.output.hex())
        assert len(cheater.challenges) == 1
    finally:
        await cheater.stop()
        if honest is not None:
            await honest.stop()


async def test_silent_device_loses_its_credit_then_its_standing(
    make_coordinator: MakeCoordinator,
) -> None:
    """Never answers a challenge: each unanswered check voids that proof and re-queues its
    task; the device stays active after the first (an honest phone may just have left)
    and is quarantined at ``quarantine_after_unanswered`` (2 here)."""
    coordinator = make_coordinator()
    token = coordinator.issue_token("enroll", uses=20)
    silent = await HostileDevice(
        coordinator.url, cheat_chunks=frozenset({0}), on_challenge="silent"
    ).start()
    honest = None
    try:
        await silent.join(token)
        first = Watcher(coordinator, submit(coordinator), coordinator.token("client"))
        view = await first.until(lambda v: v["verification"]["state"] == "void")
        assert view["state"] == "queued" and view["output"] is None
        proof = proof_of(view, silent)
        assert (proof["spot_check"], proof["credit"]) == ("unanswered", "void")
        dev = device_view(coordinator, silent)
        assert dev["state"] == "active" and dev["record"]["unanswered"] == 1
        second = Watcher(
            coordinator,
            submit(coordinator, params={**TASK["params"], "seed": "ef" * 32}),
            coordinator.token("client"),
        )
        await second.until(lambda v: v["verification"]["state"] == "void")
        dev = await wait(
            lambda: (d := device_view(coordinator, silent))["state"] == "quarantined" and d
        )
        assert "2 spot-checks unanswered" in dev["state_reason"]
        honest, _ = await redo_honestly(coordinator, first, token)
        await second.until(lambda v: v["verification"]["state"] == "verified")
        for w in (first, second):
            assert not w.ever_verified_with(silent.traces[w.task_id].output.hex())
    finally:
        await silent.stop()
        if honest is not None:
            await honest.stop()


async def test_answer_after_the_deadline_counts_as_none(
    make_coordinator: MakeCoordinator,
) -> None:
    """Answers correctly, but later than ``spot_checks.timeout_s`` every time: the check is
    unanswered and the proof void, although the opening itself would have passed."""
    coordinator = make_coordinator()
    token = coordinator.issue_token("enroll", uses=20)
    late = await HostileDevice(coordinator.url, on_challenge="late", late_s=3.0).start()
    try:
        await late.join(token)
        watcher = Watcher(coordinator, submit(coordinator), coordinator.token("client"))
        view = await watcher.until(lambda v: v["verification"]["state"] == "void")
        proof = proof_of(view, late)
        assert (proof["spot_check"], proof["credit"]) == ("unanswered", "void")
        assert view["state"] == "queued" and view["output"] is None
        assert len(late.challenges) == 2  # max_attempts
        assert device_view(coordinator, late)["record"]["unanswered"] == 1
    finally:
        await late.stop()


async def test_self_erasing_cheater_cannot_keep_its_result(
    make_coordinator: MakeCoordinator,
) -> None:
    """Erases its identity when challenged: the erasure voids the result that waited for
    the check and re-queues its task before deleting anything."""
    coordinator = make_coordinator()
    token = coordinator.issue_token("enroll", uses=20)
    cheater = await HostileDevice(
        coordinator.url, cheat_chunks=frozenset({0}), on_challenge="erase"
    ).start()
    honest = None
    try:
        await cheater.join(token)
        watcher = Watcher(coordinator, submit(coordinator), coordinator.token("client"))
        await wait(lambda: cheater.erasure_replies)
        status, erased = cheater.erasure_replies[0]
        assert status == 200, erased
        assert erased["deleted"]["tasks_released"] == 1
        view = watcher.view()
        assert view["state"] == "queued" and view["output"] is None
        assert view["verification"]["state"] == "void"
        assert proof_of(view, cheater)["credit"] == "void"
        honest, _ = await redo_honestly(coordinator, watcher, token)
        assert not watcher.ever_verified_with(cheater.traces[watcher.task_id].output.hex())
    finally:
        await cheater.stop()
        if honest is not None:
            await honest.stop()


async def test_dispute_with_a_declining_replica_ends_with_the_right_output(
    make_coordinator: MakeCoordinator,
) -> None:
    """Two replicas disagree; the liar would decline any challenge. The coordinator
    re-executes the differing chunks itself: the liar fails and is quarantined, and the
    task completes with the honest output, verified by re-execution."""
    coordinator = make_coordinator()
    token = coordinator.issue_token("enroll", uses=20)
    honest = await SimDevice(coordinator.url).start()
    liar = await HostileDevice(
        coordinator.url, cheat_chunks=frozenset({0}), on_challenge="decline"
    ).start()
    try:
        await honest.join(token)
        await liar.join(token)
        watcher = Watcher(coordinator, submit(coordinator, replicas=2), coordinator.token("client"))
        done = await watcher.until(
            lambda v: v["state"] == "completed" and v["verification"]["state"] == "verified"
        )
        assert done["output"] == honest.traces[watcher.task_id].output.hex()
        assert done["verification"]["by"] == "re-execution"
        assert proof_of(done, liar)["spot_check"] == "failed"
        assert proof_of(done, liar)["credit"] == "void"
        assert proof_of(done, honest)["credit"] == "verified"
        assert "disputed" in {v["state"] for v in watcher.seen} or done["detail"].startswith(
            "dispute resolved"
        )
        dev = device_view(coordinator, liar)
        assert dev["state"] == "quarantined" and "re-execution" in dev["state_reason"]
        assert not liar.challenges  # nobody had to ask the liar anything
    finally:
        await honest.stop()
        await liar.stop()


async def test_wrong_opening_is_a_failed_check(make_coordinator: MakeCoordinator) -> None:
    """Answers with honestly computed chunks that its committed trace does not contain:
    the Merkle paths do not reach its trace root, so the check fails."""
    coordinator = make_coordinator()
    token = coordinator.issue_token("enroll", uses=20)
    cheater = await HostileDevice(
        coordinator.url, cheat_chunks=frozenset({0}), on_challenge="wrong-opening"
    ).start()
    try:
        await cheater.join(token)
        watcher = Watcher(coordinator, submit(coordinator), coordinator.token("client"))
        dev = await wait(
            lambda: (d := device_view(coordinator, cheater))["state"] == "quarantined" and d
        )
        assert "failed spot-check" in dev["state_reason"]
        view = watcher.view()
        assert proof_of(view, cheater)["spot_check"] == "failed"
        assert view["verification"]["state"] == "void" and view["output"] is None
        assert not watcher.ever_verified_with(cheater.traces[watcher.task_id].output.hex())
    finally:
        await cheater.stop()


async def test_replayed_opening_is_no_answer(make_coordinator: MakeCoordinator) -> None:
    """Answers a challenge on its second task with the valid opening it signed for its
    first: not an answer to this challenge, so after every attempt it is unanswered."""
    coordinator = make_coordinator()
    token = coordinator.issue_token("enroll", uses=20)
    replayer = await HostileDevice(coordinator.url, on_challenge="replay").start()
    try:
        await replayer.join(token)
        first = Watcher(coordinator, submit(coordinator), coordinator.token("client"))
        await first.until(lambda v: v["verification"]["state"] == "verified")
        second = Watcher(
            coordinator,
            submit(coordinator, params={**TASK["params"], "seed": "01" * 32}),
            coordinator.token("client"),
        )
        view = await second.until(lambda v: v["verification"]["state"] == "void")
        proof = proof_of(view, replayer)
        assert (proof["spot_check"], proof["credit"]) == ("unanswered", "void")
        assert view["state"] == "queued" and view["output"] is None
        assert device_view(coordinator, replayer)["record"]["unanswered"] == 1
        # The first task's honest, passed check keeps its credit.
        assert first.view()["verification"]["state"] == "verified"
    finally:
        await replayer.stop()


async def test_colluding_replicas_are_caught_by_their_own_checks(
    make_coordinator: MakeCoordinator,
) -> None:
    """Two devices fake the same chunk the same way, so their replicas agree. Agreement
    never replaces a device's own check: while those are pending the result is
    unverified, and each colluder's check (here every task of a new device is checked)
    opens the fake. Both are quarantined; an honest device redoes the task."""
    coordinator = make_coordinator()
    token = coordinator.issue_token("enroll", uses=20)
    hold = asyncio.Event()
    colluders = [
        await HostileDevice(coordinator.url, cheat_chunks=frozenset({0}), hold=hold).start()
        for _ in range(2)
    ]
    honest = None
    try:
        for c in colluders:
            await c.join(token)
        watcher = Watcher(coordinator, submit(coordinator, replicas=2), coordinator.token("client"))
        # Both checks are under way (held by the test): the agreeing fake is delivered,
        # marked unverified, and left out of a verified-only answer.
        await wait(lambda: all(c.challenges for c in colluders))
        view = watcher.view()
        assert view["state"] == "completed"
        assert view["output"] == colluders[0].traces[watcher.task_id].output.hex()
        assert view["verification"] == {"state": "unverified", "by": None}
        only = coordinator.request(
            "GET", f"/v1/tasks/{watcher.task_id}?verified=true", token=coordinator.token("client")
        )[1]
        assert only["output"] is None
        hold.set()
        for c in colluders:
            await wait(lambda c=c: device_view(coordinator, c)["state"] == "quarantined")
        view = watcher.view()
        assert view["state"] == "queued" and view["verification"]["state"] == "void"
        assert {p["credit"] for p in view["proofs"]} == {"void"}
        fake = colluders[0].traces[watcher.task_id].output.hex()
        assert fake == colluders[1].traces[watcher.task_id].output.hex()
        assert not watcher.ever_verified_with(fake)
        honest = await SimDevice(coordinator.url).start()
        await honest.join(token)
        third = await SimDevice(coordinator.url).start()
        try:
            await third.join(token)
            done = await watcher.until(
                lambda v: v["state"] == "completed" and v["verification"]["state"] == "verified"
            )
            assert done["output"] == honest_trace(honest.assignments[0]).output.hex()
        finally:
            await third.stop()
    finally:
        for c in colluders:
            await c.stop()
        if honest is not None:
            await honest.stop()


async def test_faker_hoping_to_go_unsampled_is_caught_within_the_assurance_target(
    make_coordinator: MakeCoordinator,
) -> None:
    """Fakes one chunk in eight of every task and answers every challenge honestly, betting
    on not being sampled. The check rate is the one derived from the assurance target
    (catch a device faking 1/8 of its chunks within 60 tasks with probability 1 - 1e-6),
    not "check everything": it is caught within those 60 tasks, and once caught, every
    result of it that rested on sampling alone is void."""
    settings = merge(
        QUICK_CHECKS,
        {
            "spot_checks": {
                "catch_fraction": 0.125,
                "catch_within_tasks": 60,
                "catch_probability": 0.999999,
            },
            "scheduler": {"max_inflight_per_device": 4},
        },
    )
    coordinator = make_coordinator(settings)
    token = coordinator.issue_token("enroll", uses=20)
    faker = await HostileDevice(coordinator.url, cheat_chunks=frozenset({5})).start()
    try:
        await faker.join(token)
        ids = [
            submit(coordinator, chunks=8, params={"seed": f"{i:064x}", "iterations": 20})
            for i in range(60)
        ]
        dev = await wait(
            lambda: (d := device_view(coordinator, faker))["state"] == "quarantined" and d, 120
        )
        assert "failed spot-check" in dev["state_reason"]
        client = coordinator.token("client")
        views = [coordinator.request("GET", f"/v1/tasks/{t}", token=client)[1] for t in ids]
        # Proofs sent after the quarantine were refused; every accepted one is void.
        accepted = [v for v in views if any(p["device_id"] == faker.device_id for p in v["proofs"])]
        assert 1 <= len(accepted) <= 60
        for view in accepted:
            assert proof_of(view, faker)["credit"] == "void", view
            assert view["verification"]["state"] != "verified"
        ran = [t for t in ids if t in faker.traces]
        # Not every task was checked: the rate came from the target, not from "all".
        checked = {c.task_id for c in faker.challenges}
        assert len(checked) <= len(ran)
    finally:
        await faker.stop()


async def test_caught_cheater_loses_results_verified_only_by_sampling(
    make_coordinator: MakeCoordinator,
) -> None:
    """Works honestly until its first result is verified by a spot-check, then fakes. Once
    caught, the earlier result is void too (a check opens a few chunks, and this device is
    now known to fake), and that task runs again on an honest device."""
    coordinator = make_coordinator()
    token = coordinator.issue_token("enroll", uses=20)
    turncoat = await HostileDevice(coordinator.url).start()
    honest = None
    try:
        await turncoat.join(token)
        client = coordinator.token("client")
        earlier = Watcher(coordinator, submit(coordinator), client)
        await earlier.until(
            lambda v: v["verification"] == {"state": "verified", "by": "spot-check"}
        )
        turncoat.cheat_chunks = frozenset({0})
        later = Watcher(
            coordinator, submit(coordinator, params={**TASK["params"], "seed": "02" * 32}), client
        )
        await wait(lambda: device_view(coordinator, turncoat)["state"] == "quarantined")
        view = earlier.view()
        assert proof_of(view, turncoat)["credit"] == "void"
        assert view["state"] == "queued" and view["verification"]["state"] == "void"
        assert later.view()["verification"]["state"] == "void"
        honest, done = await redo_honestly(coordinator, earlier, token)
        assert done["verification"]["state"] == "verified"
    finally:
        await turncoat.stop()
        if honest is not None:
            await honest.stop()
