"""A client's own WebAssembly kernel on the real agent and the real coordinator: uploaded,
fetched by the device over its certificate, run in the sandbox, proved, spot-checked, and
the verified output is what the kernel computes locally, byte for byte."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aeamc.shared import wasm
from aeamc.shared.proofs import Trace
from tests.e2e.test_agent_coordinator import (
    decoded_chain,
    receipts,
    start_agent,
    start_coordinator,
    task_view,
)
from tests.support.agent import GOOD_TELEMETRY, AgentProcess
from tests.support.coordinator import CoordinatorProcess
from tests.support.kernels import kernels, mandelbrot_input

CHUNKS = 8


@pytest.fixture
def coordinators() -> Iterator[list[CoordinatorProcess]]:
    started: list[CoordinatorProcess] = []
    yield started
    for c in started:
        c.stop()


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for a in started:
        a.close()


def upload(coordinator: CoordinatorProcess, path: str, data: bytes, ctype: str) -> str:
    status, body = coordinator.request(
        "POST",
        path,
        raw_body=data,
        content_type=ctype,
        token=coordinator.token("client"),
        device=None,
    )
    assert status == 201, body
    return str(body["digest"])


def wasm_task(module: str, data: str, memory_mb: int = 8) -> dict[str, Any]:
    params = {"module": module, "input": data, "fuel": 10**9, "memory_mb": memory_mb}
    return {"kind": "wasm", "params": params, "chunks": CHUNKS}


def test_a_kernel_runs_on_a_device_and_its_result_is_verified(
    tmp_path: Path, coordinators: list[CoordinatorProcess], agents: list[AgentProcess]
) -> None:
    coordinator = start_coordinator(tmp_path / "coord", coordinators)
    agent = start_agent(
        tmp_path / "agent", coordinator, agents, profile=[{"at_s": 0, **GOOD_TELEMETRY}]
    )
    module_bytes, data_bytes = kernels()["mandelbrot"], mandelbrot_input(120, 80, 300)
    module = upload(coordinator, "/v1/modules", module_bytes, "application/wasm")
    data = upload(coordinator, "/v1/inputs", data_bytes, "application/octet-stream")
    task_id = coordinator.submit_task(wasm_task(module, data))

    def verified() -> dict[str, Any] | None:
        view = task_view(coordinator, task_id)
        proofs = view["proofs"]
        done = len(proofs) == 1 and proofs[0]["spot_check"] == "passed"
        return view if done and proofs[0]["credit"] == "verified" else None

    view = coordinator.wait_for(verified, timeout=60)
    assert view["proofs"][0]["device_id"] == agent.device_id
    compiled = wasm.check_module(module_bytes)
    expected = Trace(
        tuple(
            wasm.run_chunk(compiled, data_bytes, i, CHUNKS, fuel=10**9, memory_bytes=8 << 20).output
            for i in range(CHUNKS)
        )
    ).output
    assert bytes.fromhex(view["output"]) == expected
    # The device fetched both by digest and keeps them, checked, in its cache.
    for digest, original in ((module, module_bytes), (data, data_bytes)):
        kept = (agent.state_dir / "content" / digest).read_bytes()
        assert kept == original and hashlib.sha256(kept).hexdigest() == digest
    blocks = decoded_chain(coordinator)
    assert (task_id, agent.device_id) in receipts(blocks)


def test_a_task_beyond_the_owners_limits_is_refused_without_blame(
    tmp_path: Path, coordinators: list[CoordinatorProcess], agents: list[AgentProcess]
) -> None:
    """The device's owner allows 4 MiB per chunk; a task asking 64 is refused, named as
    such, and the device's record shows no refusal held against it."""
    coordinator = start_coordinator(tmp_path / "coord", coordinators)
    agent = start_agent(
        tmp_path / "agent",
        coordinator,
        agents,
        profile=[{"at_s": 0, **GOOD_TELEMETRY}],
        settings={"wasm": {"max_memory_mb": 4}},
    )
    module = upload(coordinator, "/v1/modules", kernels()["mandelbrot"], "application/wasm")
    data = upload(coordinator, "/v1/inputs", mandelbrot_input(), "application/octet-stream")
    task_id = coordinator.submit_task(wasm_task(module, data, memory_mb=64))

    def refused() -> dict[str, Any] | None:
        found = task_view(coordinator, task_id)["assignments"]
        return found[0] if found and found[0]["state"] == "refused" else None

    assignment = coordinator.wait_for(refused, timeout=30)
    assert assignment["device_id"] == agent.device_id
    assert assignment["reason"] == "outside_policy"
    device = coordinator.read(f"/v1/devices/{agent.device_id}")
    assert device["record"]["refusals"] == 0
    assert not (agent.state_dir / "content").exists()  # nothing fetched for it
