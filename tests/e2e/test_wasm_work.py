"""A client's own WebAssembly kernel on the real agent and the real coordinator: uploaded,
fetched by the device over its certificate, run in the sandbox, proved, spot-checked, and
the verified output is what the kernel computes locally, byte for byte."""

from __future__ import annotations

import hashlib
import os
import pty
import subprocess
import sys
from pathlib import Path
from typing import Any

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


def test_a_task_goes_only_where_it_fits_and_says_why_it_waits(
    tmp_path: Path, coordinators: list[CoordinatorProcess], agents: list[AgentProcess]
) -> None:
    """The device's owner allows 4 MiB per chunk and tags it ``mains``: a task asking 64
    MiB is never offered to it, nor one needing a tag it lacks until the operator gives
    it (with the CLI); each waiting task names why, and nothing is held against the
    device or fetched for a task it does not get."""
    coordinator = start_coordinator(tmp_path / "coord", coordinators)
    agent = start_agent(
        tmp_path / "agent",
        coordinator,
        agents,
        profile=[{"at_s": 0, **GOOD_TELEMETRY}],
        settings={"wasm": {"max_memory_mb": 4}, "work": {"tags": ["mains"]}},
    )
    path = f"/v1/devices/{agent.device_id}"
    device = coordinator.wait_for(
        lambda: coordinator.get(path)[1].get("state") == "active" and coordinator.read(path),
        timeout=30,
    )
    assert device["capabilities"]["wasm"]["max_memory_mb"] == 4
    assert device["tags"] == {"device": ["mains"], "operator": []}
    module = upload(coordinator, "/v1/modules", kernels()["mandelbrot"], "application/wasm")
    data = upload(coordinator, "/v1/inputs", mandelbrot_input(), "application/octet-stream")
    too_big = coordinator.submit_task(wasm_task(module, data, memory_mb=64))
    racked = coordinator.submit_task(
        {**wasm_task(module, data, memory_mb=4), "requires": {"tags": ["mains", "rack-2"]}}
    )
    assert task_view(coordinator, too_big)["unplaced"] == (
        "no enrolled device fits: allows 4 MiB per chunk, the task asks 64 (1 device)"
    )
    assert task_view(coordinator, racked)["unplaced"] == (
        "no enrolled device fits: lacks the tag rack-2 (1 device)"
    )
    shown = coordinator.cli("devices", "tag", agent.device_id, "--add", "rack-2").stdout
    assert "operator tags: rack-2" in shown and "own tags: mains" in shown

    def verified() -> dict[str, Any] | None:
        view = task_view(coordinator, racked)
        return view if view["verification"]["state"] == "verified" else None

    coordinator.wait_for(verified, timeout=90)
    # Scheduling rounds went past the other task all along: it was never offered.
    view = task_view(coordinator, too_big)
    assert view["state"] == "queued" and view["assignments"] == []
    assert view["unplaced"] is not None
    device = coordinator.read(f"/v1/devices/{agent.device_id}")
    assert device["record"]["refusals"] == 0
    assert device["tags"] == {"device": ["mains"], "operator": ["rack-2"]}
    assert sorted(p.name for p in (agent.state_dir / "content").iterdir()) == sorted((module, data))


def client_env(coordinator: CoordinatorProcess, **over: str) -> dict[str, str]:
    """What a client is told by the operator: the URL, its token, the CA's fingerprint."""
    ca = coordinator.request("GET", "/v1/ca", device=None)[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AEAMC_")}
    env |= {
        "AEAMC_URL": coordinator.url,
        "AEAMC_TOKEN": coordinator.token("client"),
        "AEAMC_CA_FINGERPRINT": ca["ca_fingerprint"],
        "AEAMC_CLIENT_CONFIG": "",
        "HOME": str(coordinator.root),
        **over,
    }
    return env


def aeamc(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aeamc.shared.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
        check=False,
    )


def test_the_client_cli_takes_a_c_kernel_to_a_verified_result(
    tmp_path: Path, coordinators: list[CoordinatorProcess], agents: list[AgentProcess]
) -> None:
    """docs/workloads.md's walk-through: a module built from C, an input, one command to a
    verified result file; a second submission uploads nothing again."""
    coordinator = start_coordinator(tmp_path / "coord", coordinators)
    start_agent(tmp_path / "agent", coordinator, agents, profile=[{"at_s": 0, **GOOD_TELEMETRY}])
    module, data = tmp_path / "mandelbrot.wasm", tmp_path / "view.bin"
    module.write_bytes(kernels()["mandelbrot"])
    data.write_bytes(mandelbrot_input(64, 48, 200))
    out = tmp_path / "image.gray"
    env = client_env(coordinator)
    done = aeamc(
        "task", "submit", "--wasm", str(module), "--input", str(data), "--chunks", "6",
        "--memory-mb", "8", "--verified", "-o", str(out), "--timeout", "120", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    task_id = done.stdout.strip()
    assert "uploaded" in done.stderr and "verified" in done.stderr
    assert "\r[" not in done.stderr  # not a terminal: no progress line, only the outcome
    compiled = wasm.check_module(module.read_bytes())
    expected = b"".join(
        wasm.run_chunk(compiled, data.read_bytes(), i, 6, fuel=10**9, memory_bytes=8 << 20).output
        for i in range(6)
    )
    assert out.read_bytes() == expected and len(expected) == 64 * 48
    status = aeamc("task", "status", task_id, env=env)
    assert status.returncode == 0 and "verified by spot-check" in status.stdout
    again = aeamc(
        "task", "submit", "--wasm", str(module), "--input", str(data), "--chunks", "6", env=env
    )
    assert again.returncode == 0 and again.stderr.count("already uploaded") == 2
    listed = aeamc("task", "list", env=env)
    assert task_id in listed.stdout and again.stdout.strip() in listed.stdout


#: A kernel whose chunks 0-2 end at once and whose chunk 3 loops until its fuel is spent:
#: a device holds still at 3 chunks done for as long as a test looks.
STUCK_AT_3 = """(module (memory (export "memory") 1)
    (func (export "aeamc_input") (param i32) (result i32) i32.const 16)
    (func (export "aeamc_output") (result i32) i32.const 0)
    (func (export "aeamc_run") (param $index i32) (param i32 i32) (result i32)
      (if (i32.ge_u (local.get $index) (i32.const 3)) (then (loop $l br $l)))
      i32.const 1))"""


def on_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run ``aeamc`` with its stderr on a pseudo-terminal; its exit status and what it
    wrote there."""
    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "aeamc.shared.cli", *args],
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            env=env,
            timeout=60,
            check=False,
        )
    finally:
        os.close(terminal)
    written = b""
    try:
        while chunk := os.read(controller, 4096):
            written += chunk
    except OSError:  # EIO: everything the closed terminal held has been read
        pass
    finally:
        os.close(controller)
    return done.returncode, written.decode()


def test_the_client_sees_the_chunks_a_device_has_done(
    tmp_path: Path, coordinators: list[CoordinatorProcess], agents: list[AgentProcess]
) -> None:
    """The device's heartbeats carry its chunks done to the coordinator's task view, and
    the client's ``status`` and progress line show them while the task runs."""
    import wasmtime

    coordinator = start_coordinator(tmp_path / "coord", coordinators)
    agent = start_agent(
        tmp_path / "agent",
        coordinator,
        agents,
        profile=[{"at_s": 0, **GOOD_TELEMETRY}],
        settings={"network": {"shutdown_grace_s": 0.5}},
    )
    module = upload(coordinator, "/v1/modules", wasmtime.wat2wasm(STUCK_AT_3), "application/wasm")
    data = upload(coordinator, "/v1/inputs", b"anything", "application/octet-stream")
    task = wasm_task(module, data)
    task["params"]["fuel"] = 10**11  # the agent's default limit: minutes of looping
    task_id = coordinator.submit_task(task)

    def stuck() -> dict[str, Any] | None:
        found = task_view(coordinator, task_id)["assignments"]
        return found[0] if found and found[0]["chunks_done"] == 3 else None

    assignment = coordinator.wait_for(stuck, timeout=60)
    assert assignment["device_id"] == agent.device_id and assignment["state"] == "accepted"
    env = client_env(coordinator)
    status = aeamc("task", "status", task_id, env=env)
    assert f"{agent.device_id} accepted, 3/{CHUNKS} chunks done" in status.stdout
    # One look (--timeout 0): the line shows the stage and the count, then it gives up.
    code, shown = on_a_terminal(
        ["task", "result", task_id, "-o", str(tmp_path / "out"), "--timeout", "0"], env
    )
    assert code == 75, shown
    assert f"] running   3/{CHUNKS} chunks on {agent.device_id[:8]}" in shown


def test_the_client_cli_sends_nothing_to_a_coordinator_it_cannot_verify(
    tmp_path: Path, coordinators: list[CoordinatorProcess]
) -> None:
    coordinator = start_coordinator(tmp_path / "coord", coordinators)
    module = tmp_path / "k.wasm"
    module.write_bytes(kernels()["mandelbrot"])
    wrong = client_env(coordinator, AEAMC_CA_FINGERPRINT="ab" * 32)
    done = aeamc("task", "submit", "--wasm", str(module), "--chunks", "2", env=wrong)
    assert done.returncode == 69 and "not the coordinator you meant" in done.stderr
    assert not (coordinator.state_dir / "content").exists()  # no upload reached it
    unset = client_env(coordinator, AEAMC_CA_FINGERPRINT="")
    done = aeamc("task", "list", env=unset)
    assert done.returncode == 64 and "AEAMC_CA_FINGERPRINT" in done.stderr


def test_a_kernel_that_never_ends_fails_its_task_cleanly_without_blaming_the_device(
    tmp_path: Path, coordinators: list[CoordinatorProcess], agents: list[AgentProcess]
) -> None:
    """An endless loop runs out of fuel on the device; the device reports it, the
    coordinator sees the same fault when it runs the chunk, and the task fails at once
    with the reason — the device is charged nothing and keeps working."""
    import wasmtime

    coordinator = start_coordinator(tmp_path / "coord", coordinators)
    agent = start_agent(
        tmp_path / "agent", coordinator, agents, profile=[{"at_s": 0, **GOOD_TELEMETRY}]
    )
    endless = wasmtime.wat2wasm(
        """(module (memory (export "memory") 1)
        (func (export "aeamc_input") (param i32) (result i32) i32.const 16)
        (func (export "aeamc_output") (result i32) i32.const 0)
        (func (export "aeamc_run") (param i32 i32 i32) (result i32)
          (loop $l br $l) i32.const 0))"""
    )
    module = upload(coordinator, "/v1/modules", endless, "application/wasm")
    data = upload(coordinator, "/v1/inputs", b"anything", "application/octet-stream")
    task = wasm_task(module, data)
    task["params"]["fuel"] = 5_000_000
    task_id = coordinator.submit_task(task)

    view = coordinator.wait_for(
        lambda: (v := task_view(coordinator, task_id))["state"] == "failed" and v, timeout=60
    )
    assert "chunk 0 has no output" in view["detail"] and "out of fuel" in view["detail"]
    assert [(a["state"], a["reason"]) for a in view["assignments"]] == [("lost", "kernel fault")]
    record = coordinator.read(f"/v1/devices/{agent.device_id}")["record"]
    assert (record["failures"], record["refusals"], record["timeouts"]) == (0, 0, 0)
    # The device gave the task up and takes the next one.
    following = coordinator.submit_task(
        wasm_task(
            upload(coordinator, "/v1/modules", kernels()["mandelbrot"], "application/wasm"),
            upload(coordinator, "/v1/inputs", mandelbrot_input(), "application/octet-stream"),
        )
    )
    coordinator.wait_for(
        lambda: task_view(coordinator, following)["state"] == "completed", timeout=60
    )
