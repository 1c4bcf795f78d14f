"""The real agent and the real coordinator, as separate processes, talking over loopback.

Each test asserts outcomes, not log lines: task states, proof and receipt counts, block
bytes decoded and chain-verified, labels recomputed locally, device states.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from aeamc.shared import microblock
from aeamc.shared.proofs import Trace, split_output
from aeamc.shared.tasks import classify_int8
from aeamc.shared.tasks.registry import discover
from tests.agent.test_mdns import _multicast_on_loopback_works
from tests.support.agent import GOOD_TELEMETRY, AgentProcess
from tests.support.coordinator import CoordinatorProcess

ROOT = Path(__file__).resolve().parents[2]
HOLDOUT = ROOT / "tests" / "data" / "digits_holdout.json"
SHA = discover().get("sha256-chain")


# --- building blocks ----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def submit(coordinator: CoordinatorProcess, task: dict[str, Any]) -> str:
    return coordinator.submit_task(task)


def task_view(coordinator: CoordinatorProcess, task_id: str) -> dict[str, Any]:
    return coordinator.read(f"/v1/tasks/{task_id}", role="client")  # type: ignore[no-any-return]


def wait_all_accepted(coordinator: CoordinatorProcess, ids: list[str]) -> None:
    """Until every task in ``ids`` is accepted (or already proved) by the device it went to."""

    def all_accepted() -> bool:
        return all(
            [a["state"] for a in task_view(coordinator, i)["assignments"]]
            in (["accepted"], ["proved"])
            for i in ids
        )

    coordinator.wait_for(all_accepted, timeout=20, interval=0.05)


def device_view(coordinator: CoordinatorProcess, device_id: str) -> dict[str, Any] | None:
    status, body = coordinator.get(f"/v1/devices/{device_id}")
    return body if status == 200 else None


def decoded_chain(coordinator: CoordinatorProcess) -> list[microblock.Microblock]:
    """Every block, from the exact bytes served, after checking the hash chain."""
    listing = coordinator.request("GET", "/v1/microblocks?limit=1000")[1]["microblocks"]
    blocks = []
    for b in listing:
        status, raw = coordinator.request("GET", f"/v1/microblocks/{b['height']}/raw")
        assert status == 200 and isinstance(raw, bytes)
        blocks.append(microblock.decode(raw))
    microblock.verify_chain(blocks)
    return blocks


def receipts(blocks: list[microblock.Microblock]) -> list[tuple[str, str]]:
    return [(r.task_id, r.device_id) for b in blocks for r in b.receipts]


def task_ids_in(files: list[Path]) -> list[str]:
    """Task ids of queue or outbox files (``<number>-<task_id>.json``)."""
    return [f.stem.split("-", 1)[1] for f in files]


def sha_task(seed_byte: int, *, iterations: int = 2_000, chunks: int = 6) -> dict[str, Any]:
    params = {"seed": f"{seed_byte:02x}" * 32, "iterations": iterations}
    return {"kind": "sha256-chain", "params": params, "chunks": chunks}


def start_coordinator(
    root: Path, started: list[CoordinatorProcess], settings: dict[str, Any] | None = None
) -> CoordinatorProcess:
    coordinator = CoordinatorProcess(root, settings=settings or {})
    coordinator.init()
    coordinator.start()
    started.append(coordinator)
    return coordinator


def start_agent(
    root: Path, coordinator: CoordinatorProcess, started: list[AgentProcess], **options: Any
) -> AgentProcess:
    """A started agent pointed straight at ``coordinator`` (no mDNS), newly enrolled."""
    agent = AgentProcess(
        root,
        coordinator_url=coordinator.url,
        token=coordinator.issue_token("enroll", uses=5),
        mdns=False,
        **options,
    )
    started.append(agent)
    agent.start()
    return agent


# --- the tests ----------------------------------------------------------------------------


def test_mdns_discovery_enrollment_and_verified_work(
    tmp_path: Path, coordinators: list[CoordinatorProcess], agents: list[AgentProcess]
) -> None:
    if not _multicast_on_loopback_works():
        pytest.fail("multicast on loopback does not work here; try: ip link set lo multicast on")
    coordinator = start_coordinator(
        tmp_path / "coord",
        coordinators,
        {"server": {"mdns": True, "mdns_interfaces": "127.0.0.1"}},
    )
    # No coordinator URL: the agent must find it over mDNS on the loopback interface.
    agent = AgentProcess(tmp_path / "agent", token=coordinator.issue_token("enroll", uses=5))
    agents.append(agent)
    agent.start()
    device = coordinator.wait_for(
        lambda: (d := device_view(coordinator, agent.device_id)) and d["last_seq"] >= 2 and d
    )
    assert device["state"] == "active" and device["endpoint"] == agent.endpoint
    status = agent.wait_status(lambda s: s["coordinator"]["state"] == "active")
    assert status["coordinator"]["discovery"] == "mdns"
    assert status["coordinator"]["url"] == coordinator.url
    assert (
        status["coordinator"]["coordinator_id"]
        == coordinator.request("GET", "/v1/health")[1]["coordinator_id"]
    )

    # On this machine the real psutil source has no battery: null, never invented.
    status = agent.status()
    assert status["telemetry_source"] == "psutil"
    battery = psutil.sensors_battery()
    if battery is None:
        assert status["telemetry"]["battery_pct"] is None
        assert status["telemetry"]["charging"] is None
        assert device["telemetry"]["battery_pct"] is None  # what the heartbeats carried
        assert device["capabilities"]["battery"] is False
    else:  # pragma: no cover - a machine with a battery
        assert status["telemetry"]["battery_pct"] == round(battery.percent)

    sha = sha_task(0xA1)
    holdout = json.loads(HOLDOUT.read_text())
    samples = holdout["samples"][: 40 * 2 * classify_int8.FEATURES]  # 40 digits
    digits = {"kind": "classify-int8", "params": {"samples": samples, "batch_size": 8}}
    digits["chunks"] = 5
    ids = [submit(coordinator, sha), submit(coordinator, digits)]

    def verified() -> list[dict[str, Any]] | None:
        views = [task_view(coordinator, i) for i in ids]
        ok = all(
            v["state"] == "completed"
            and len(v["proofs"]) == 1
            and v["proofs"][0]["spot_check"] == "passed"
            and v["proofs"][0]["credit"] == "verified"
            for v in views
        )
        return views if ok else None

    sha_view, digits_view = coordinator.wait_for(verified, timeout=40)
    for view in (sha_view, digits_view):
        assert view["proofs"][0]["device_id"] == agent.device_id
        assert [a["device_id"] for a in view["assignments"]] == [agent.device_id]

    # The outputs are what the kinds compute locally, byte for byte.
    expected = Trace(tuple(SHA.run_chunk(sha["params"], i, 6) for i in range(6))).output
    assert bytes.fromhex(sha_view["output"]) == expected
    labels = b"".join(split_output(bytes.fromhex(digits_view["output"]), 5))
    assert len(labels) == 40
    assert labels == classify_int8.predict(bytes.fromhex(samples))

    # Both receipts are in blocks whose exact bytes decode and chain from genesis.
    blocks = decoded_chain(coordinator)
    for view in (sha_view, digits_view):
        block = blocks[view["proofs"][0]["block_height"]]
        assert (view["task_id"], agent.device_id) in receipts([block])
    assert sorted(receipts(blocks)) == sorted((i, agent.device_id) for i in ids)
    done = agent.wait_status(lambda s: s["queue"]["count"] == 0 and s["outbox"]["count"] == 0)
    assert done["outbox"]["rejected"] == 0 and done["queue"]["abandoned"] == 0


def test_proofs_survive_a_coordinator_outage_and_an_agent_restart(
    tmp_path: Path, coordinators: list[CoordinatorProcess], agents: list[AgentProcess]
) -> None:
    n = 20
    coordinator = start_coordinator(
        tmp_path / "coord",
        coordinators,
        {
            "server": {"port": free_port()},  # the same address after the outage
            "scheduler": {"max_inflight_per_device": n},
        },
    )
    agent = start_agent(tmp_path / "agent", coordinator, agents, settings={"max_queued_tasks": n})
    coordinator.wait_for(
        lambda: (d := device_view(coordinator, agent.device_id)) and d["last_seq"] >= 2
    )
    # Each task takes the agent about a quarter of a second: all 20 are still far from
    # done when the coordinator goes down right after assigning them.
    ids = [submit(coordinator, sha_task(i, iterations=80_000, chunks=4)) for i in range(n)]

    wait_all_accepted(coordinator, ids)
    coordinator.kill()

    # The agent keeps working; finished proofs wait in its outbox.
    agent.wait_status(lambda s: s["outbox"]["count"] >= 4, timeout=30)
    agent.kill()  # kill -9 mid-work, with tasks still queued
    queued = task_ids_in(agent.files("queue"))
    in_outbox = task_ids_in(agent.files("outbox"))
    assert len(queued) >= 5, "the agent was restarted too late to test the queue"
    agent.start()
    status = agent.wait_status(lambda s: s["queue"]["count"] == 0, timeout=40)
    waiting = task_ids_in(agent.files("outbox"))
    # Across the kill nothing was lost and nothing was run twice: one proof per task.
    assert sorted(waiting) == sorted(set(queued) | set(in_outbox))
    assert len(waiting) >= n - 4  # the outage held back (almost) every proof
    assert status["queue"]["abandoned"] == 0

    coordinator.start()  # same state directory, same port
    views = coordinator.wait_for(
        lambda: (
            (vs := [task_view(coordinator, i) for i in ids])
            and all(v["state"] == "completed" for v in vs)
            and vs
        ),
        timeout=40,
    )
    assert all(len(v["proofs"]) == 1 for v in views)  # none lost, none twice
    assert {v["proofs"][0]["device_id"] for v in views} == {agent.device_id}
    # The proof that waited longest carries the right output (the others are spot-checked).
    expected = Trace(tuple(SHA.run_chunk(views[0]["params"], i, 4) for i in range(4))).output
    assert bytes.fromhex(views[0]["output"]) == expected

    # 20 receipts, 20 distinct, in a chain that verifies.
    blocks = coordinator.wait_for(
        lambda: (bs := decoded_chain(coordinator)) and len(receipts(bs)) == n and bs
    )
    assert sorted(receipts(blocks)) == sorted((i, agent.device_id) for i in ids)
    summary = coordinator.request("GET", "/v1/status", token=coordinator.token("operator"))[1]
    assert sum(summary["proofs"].values()) == n

    # The agent delivered everything and had nothing refused.
    final = agent.wait_status(lambda s: s["outbox"]["count"] == 0)
    assert final["outbox"]["rejected"] == 0 and not agent.files("rejected")
    assert not agent.files("outbox") and not agent.files("queue")


def test_cheater_is_caught_quarantined_and_given_no_more_work(
    tmp_path: Path, coordinators: list[CoordinatorProcess], agents: list[AgentProcess]
) -> None:
    coordinator = start_coordinator(tmp_path / "coord", coordinators)
    cheater = start_agent(
        tmp_path / "cheater",
        coordinator,
        agents,
        profile=[{"at_s": 0, **GOOD_TELEMETRY}],
        cheat_fraction=1.0,
    )
    assert cheater.status()["demo_cheater"] is True
    first = submit(coordinator, sha_task(0xC0))

    dev = coordinator.wait_for(
        lambda: (
            (d := device_view(coordinator, cheater.device_id)) and d["state"] == "quarantined" and d
        ),
        timeout=40,
    )
    assert "failed spot-check" in dev["state_reason"]
    assert dev["record"]["failures"] == 1
    view = task_view(coordinator, first)
    assert [(p["spot_check"], p["credit"]) for p in view["proofs"]] == [("failed", "void")]

    # The agent learns it from its next heartbeat and stops taking work.
    status = cheater.wait_status(lambda s: s["coordinator"]["state"] == "quarantined")
    assert status["accepting_work"] is False and status["refusal_reason"] == "quarantined"
    health = cheater.health()
    assert (health["accepting_work"], health["reason"]) == (False, "quarantined")

    # New work never reaches it.
    second = submit(coordinator, sha_task(0xC1))
    time.sleep(1.5)  # several scheduling rounds (tick 0.2 s)
    assert task_view(coordinator, second)["assignments"] == []
    assert task_view(coordinator, second)["state"] == "queued"
    assert cheater.status_file()["queue"]["count"] == 0
    assert f"task {second} accepted" not in cheater.log_text()
    assert cheater.stop() == 0  # and it still shuts down cleanly


def test_one_request_id_follows_a_task_through_both_daemons_logs(
    tmp_path: Path, coordinators: list[CoordinatorProcess], agents: list[AgentProcess]
) -> None:
    from aeamc.coordinator.logs import task_request_id

    coordinator = start_coordinator(tmp_path / "coord", coordinators)
    agent = start_agent(tmp_path / "agent", coordinator, agents)
    coordinator.wait_for(
        lambda: (d := device_view(coordinator, agent.device_id)) and d["last_seq"] >= 2
    )
    # The flag the agent understands reaches it with the next heartbeat reply.
    coordinator.cli("flags", "set", "adaptive-heartbeat", "--percent", "100", "--by", "ops")
    agent.wait_status(lambda s: s["flags"] == {"adaptive-heartbeat": True})

    task_id = submit(coordinator, sha_task(0xB7, chunks=4))
    coordinator.wait_for(
        lambda: (
            (v := task_view(coordinator, task_id))["state"] == "completed"
            and v["proofs"][0]["spot_check"] == "passed"
        )
    )
    rid = task_request_id(task_id)

    def lines(text: str) -> list[dict[str, Any]]:
        parsed = [json.loads(x) for x in text.splitlines() if x.startswith("{")]
        keys = {"level", "logger", "msg"} | (
            {"ts"} if "JOURNAL_STREAM" not in os.environ else set()
        )
        assert parsed and all(keys <= set(x) for x in parsed)
        return [x for x in parsed if x.get("request_id") == rid]

    assert coordinator.log is not None
    coord_lines = coordinator.wait_for(
        lambda: (found := lines(coordinator.log.read_text())) and len(found) >= 3 and found
    )
    agent_lines = lines(agent.log_text())
    coord_msgs = " | ".join(x["msg"] for x in coord_lines)
    agent_msgs = " | ".join(x["msg"] for x in agent_lines)
    # The coordinator's push, the proof the agent posted back under the same id, the check.
    assert "accepted by" in coord_msgs and f"proof for task {task_id}" in coord_msgs
    assert {x["logger"].split(".")[1] for x in coord_lines} == {"coordinator"}
    # The agent's acceptance, its run, its delivery and its answer to the challenge.
    for needle in ("accepted", "started", "done", "delivered", "challenge"):
        assert needle in agent_msgs, (needle, agent_msgs)
    assert {x["logger"].split(".")[1] for x in agent_lines} == {"agent"}


def test_the_agent_renews_its_certificate_and_keeps_working(
    tmp_path: Path, coordinators: list[CoordinatorProcess], agents: list[AgentProcess]
) -> None:
    """4 s certificates: the agent re-enrolls after two thirds of each, over mutual TLS, and
    its heartbeats and proofs go on being accepted with the new one."""
    coordinator = start_coordinator(
        tmp_path / "coord", coordinators, {"tls": {"device_cert_lifetime_s": 4}}
    )
    agent = start_agent(tmp_path / "agent", coordinator, agents, heartbeat_interval_s=0.5)
    operator = coordinator.token("operator")

    def certificates() -> list[dict[str, Any]]:
        path = f"/v1/devices/{agent.device_id}/export"
        status, body = coordinator.request("GET", path, token=operator)
        return body["certificates"] if status == 200 else []

    issued = coordinator.wait_for(lambda: len(c := certificates()) >= 3 and c, timeout=30)
    assert len({c["serial"] for c in issued}) == len(issued)
    assert all(c["revoked_at"] is None for c in issued)
    # The agent shows the CA the coordinator shows, and uses one of the recent certificates.
    status = agent.status()
    ca = coordinator.request("GET", "/v1/health")[1]["ca_fingerprint"]
    assert status["tls"]["ca_fingerprint"] == ca
    assert status["tls"]["certificate"]["serial"] in {c["serial"] for c in certificates()}
    task_id = submit(coordinator, sha_task(0xCE))
    view = coordinator.wait_for(
        lambda: (v := task_view(coordinator, task_id))["state"] == "completed" and v, timeout=30
    )
    assert [p["device_id"] for p in view["proofs"]] == [agent.device_id]
    assert device_view(coordinator, agent.device_id)["state"] == "active"
