"""The device owner's placement settings on a real agent: what it advertises (enrollment,
``/v1/capabilities``) and what it refuses when a coordinator offers work outside them
anyway — the offer is the coordinator's claim, the limits are the owner's."""

from __future__ import annotations

import hashlib

from aeamc.shared.placement import Needs, misfit
from tests.support.kernels import kernels, mandelbrot_input

from .conftest import eventually
from .fakecoord import FakeCoordinator
from .test_server import call

CLIENT = "0a0b0c0d"
WASM_PARAMS = {"module": "ab" * 32, "input": "cd" * 32, "fuel": 1000, "memory_mb": 64}


async def test_the_owners_settings_are_advertised_and_placed_by(
    fake_coordinator: FakeCoordinator, make_agent
) -> None:
    agent = await make_agent(
        coordinator_url=fake_coordinator.url,
        tags=("mains", "lab", "lab"),
        accept_clients=(CLIENT,),
        wasm_max_memory_mb=4,
        wasm_max_fuel=5000,
        wasm_max_module_bytes=1 << 20,
    )
    await eventually(lambda: agent.link.pin is not None and fake_coordinator.enrollments)
    caps = fake_coordinator.enrollments[-1].capabilities
    # Sorted and distinct, and signed with the rest of the enrollment.
    assert caps.tags == ("lab", "mains")
    assert caps.clients == (CLIENT,)
    assert caps.wasm is not None and caps.wasm.to_dict() == {
        "max_memory_mb": 4,
        "max_fuel": 5000,
        "max_module_bytes": 1 << 20,
    }
    status, body = await call(agent, "GET", "/v1/capabilities")
    assert status == 200 and body["capabilities"] == caps.to_dict()
    # What the scheduler makes of them.
    assert misfit(caps, (), Needs("sha256-chain", client=CLIENT, tags=frozenset({"lab"}))) is None
    assert misfit(caps, (), Needs("sha256-chain", client="ffffffff")) is not None
    wasm = Needs.of_task("wasm", WASM_PARAMS, None, client=CLIENT, module_bytes=1000)
    assert misfit(caps, (), wasm) == "allows 4 MiB per chunk, the task asks 64"


async def test_a_device_with_no_settings_advertises_none(
    fake_coordinator: FakeCoordinator, make_agent
) -> None:
    """Unset, the new members stay out, so the enrollment keeps its old bytes; the WASM
    limits go out only with the kind."""
    agent = await make_agent(coordinator_url=fake_coordinator.url, wasm_enabled=False)
    await eventually(lambda: agent.link.pin is not None and fake_coordinator.enrollments)
    sent = fake_coordinator.enrollments[-1].capabilities.to_dict()
    assert "wasm" not in sent["kinds"]
    assert not {"tags", "clients", "wasm"} & set(sent)


async def test_work_from_a_client_the_owner_did_not_choose_is_refused_without_running(
    fake_coordinator: FakeCoordinator, make_agent
) -> None:
    agent = await make_agent(coordinator_url=fake_coordinator.url, accept_clients=(CLIENT,))
    await eventually(lambda: agent.link.pin is not None and fake_coordinator.heartbeats)
    for task_id, client in (("other", "ffffffff"), ("nobody", None)):
        a = fake_coordinator.assignment(agent.device_id, task_id=task_id, client=client)
        status, body = await call(agent, "POST", "/v1/assignments", a.to_dict())
        assert (status, body["error"]["reason"]) == (409, "outside_policy")
        assert "chosen clients" in body["error"]["message"]
    assert agent.queue.count == 0
    assert agent.metrics.refusals["outside_policy"] == 2
    mine = fake_coordinator.assignment(agent.device_id, task_id="mine", client=CLIENT)
    status, body = await call(agent, "POST", "/v1/assignments", mine.to_dict())
    assert (status, body) == (202, {"accepted": True, "state": "running"})
    await eventually(lambda: any(p.task_id == "mine" for p, _ in fake_coordinator.proofs))


async def test_wasm_work_beyond_the_owners_limits_is_refused_before_anything_is_fetched(
    fake_coordinator: FakeCoordinator, make_agent
) -> None:
    agent = await make_agent(
        coordinator_url=fake_coordinator.url, wasm_max_memory_mb=4, wasm_max_fuel=500
    )
    await eventually(lambda: agent.link.pin is not None and fake_coordinator.heartbeats)
    for task_id, params, words in (
        ("memory", {**WASM_PARAMS, "fuel": 100}, "64 MiB"),
        ("fuel", {**WASM_PARAMS, "memory_mb": 4}, "1000 fuel"),
    ):
        a = fake_coordinator.assignment(
            agent.device_id, task_id=task_id, kind="wasm", params=params
        )
        status, body = await call(agent, "POST", "/v1/assignments", a.to_dict())
        assert (status, body["error"]["reason"]) == (409, "outside_policy")
        assert words in body["error"]["message"]
    assert agent.queue.count == 0
    assert not (agent.config.state_dir / "content").exists()


async def test_a_module_over_the_owners_size_limit_is_not_taken_in(
    fake_coordinator: FakeCoordinator, make_agent
) -> None:
    """A coordinator that offers a module larger than the device allows (its size is not
    in the assignment, so only the fetch can tell): the device stops reading at its limit,
    keeps nothing and proves nothing."""
    module, data = kernels()["mandelbrot"], mandelbrot_input()
    digests = {hashlib.sha256(b).hexdigest(): b for b in (module, data)}
    fake_coordinator.content.update(digests)
    agent = await make_agent(
        coordinator_url=fake_coordinator.url, wasm_max_module_bytes=len(module) - 1
    )
    await eventually(lambda: agent.link.pin is not None and fake_coordinator.heartbeats)
    module_digest, input_digest = list(digests)
    params = {"module": module_digest, "input": input_digest, "fuel": 10**8, "memory_mb": 8}
    a = fake_coordinator.assignment(agent.device_id, task_id="big", kind="wasm", params=params)
    status, body = await call(agent, "POST", "/v1/assignments", a.to_dict())
    assert (status, body["state"]) == (202, "running")
    await eventually(lambda: agent.queue.count == 0 and agent.runner.current is None)
    content = agent.config.state_dir / "content"
    assert not (content / module_digest).exists()
    assert not fake_coordinator.proofs
    # Within the limit the same task runs and is proved.
    roomy = await make_agent(
        coordinator_url=fake_coordinator.url, wasm_max_module_bytes=len(module), subdir="roomy"
    )
    await eventually(lambda: roomy.link.pin is not None)
    again = fake_coordinator.assignment(roomy.device_id, task_id="fits", kind="wasm", params=params)
    status, body = await call(roomy, "POST", "/v1/assignments", again.to_dict())
    assert status == 202
    await eventually(
        lambda: any(p.task_id == "fits" for p, _ in fake_coordinator.proofs), timeout=20
    )
