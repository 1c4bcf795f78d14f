"""A coordinator and two agents on a real (virtual) LAN: three network namespaces joined
by a Linux bridge that lives in a fourth. No coordinator URL anywhere: the agents find
the coordinator over real mDNS multicast crossing the bridge, enroll, and do verified
work that the coordinator spot-checks. Needs root and ``ip netns``; skipped otherwise.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aeamc.shared import microblock
from aeamc.shared.proofs import Trace
from aeamc.shared.tasks.registry import discover
from tests.support.netns import Lan, NetnsAgent, NetnsCoordinator, running_lan, unavailable
from tests.support.waiting import wait_for

from .test_agent_coordinator import receipts, sha_task, task_view
from .test_network_loss import assert_delivered_exactly_once

pytestmark = pytest.mark.skipif(bool(unavailable()), reason=unavailable() or "")

SHA = discover().get("sha256-chain")
N_TASKS, CHUNKS = 6, 4


@pytest.fixture
def lan() -> Iterator[Lan]:
    with running_lan("ae", ["coord", "a1", "a2"]) as net:
        yield net


def lan_coordinator(tmp_path: Path, lan: Lan, **scheduler: Any) -> NetnsCoordinator:
    coord_ip = lan.addresses["coord"]
    return NetnsCoordinator(
        tmp_path / "coord",
        settings={
            "server": {
                "host": coord_ip,
                "port": 8443,
                "mdns": True,
                "mdns_interfaces": coord_ip,
            },
            "scheduler": scheduler,
        },
        ns=lan.namespaces["coord"],
        address=coord_ip,
    )


def lan_agent(tmp_path: Path, lan: Lan, host: str, token: str, **settings: Any) -> NetnsAgent:
    address = lan.addresses[host]
    return NetnsAgent(
        tmp_path / host,
        token=token,  # and no coordinator_url: mDNS only
        mdns_interfaces=(address,),
        settings={"listen": {"host": address, "port": 0}, **settings},
        ns=lan.namespaces[host],
    )


def test_discovery_and_verified_work_across_a_bridge(tmp_path: Path, lan: Lan) -> None:
    coordinator = lan_coordinator(tmp_path, lan)
    agents: list[NetnsAgent] = []
    try:
        coordinator.init()
        coordinator.start()
        assert coordinator.url == f"https://{lan.addresses['coord']}:8443"
        status, health = coordinator.request("GET", "/v1/health")
        assert status == 200
        status, tok = coordinator.request(
            "POST", "/v1/tokens", {"role": "enroll", "uses": 2}, token=coordinator.token("operator")
        )
        assert status == 201, tok
        for host in ("a1", "a2"):
            agent = lan_agent(tmp_path, lan, host, tok["token"])
            agents.append(agent)
            agent.start()

        # Both agents found the coordinator over multicast and enrolled.
        for agent, host in zip(agents, ("a1", "a2"), strict=True):
            st = agent.wait_status(lambda s: s["coordinator"]["state"] == "active", timeout=30)
            assert st["coordinator"]["discovery"] == "mdns"
            assert st["coordinator"]["url"] == coordinator.url
            assert st["coordinator"]["coordinator_id"] == health["coordinator_id"]
            assert st["endpoint"].startswith(f"https://{lan.addresses[host]}:")
            device = coordinator.request(
                "GET", f"/v1/devices/{agent.device_id}", token=coordinator.token("operator")
            )[1]
            assert device["state"] == "active" and device["endpoint"] == st["endpoint"]
        # Both may take work (enough heartbeats seen) before any is offered: otherwise the
        # first one could finish every task before the second becomes eligible.
        for agent in agents:
            wait_for(
                lambda a=agent: (
                    coordinator.request(
                        "GET", f"/v1/devices/{a.device_id}", token=coordinator.token("operator")
                    )[1]["eligibility"]
                    == "eligible"
                ),
                timeout=30,
                interval=0.2,
            )

        # Half the tasks for each agent: the operator tags each device with its host's name
        # and each task requires one of them. Left to the scheduler, whichever device ranks
        # first would take every task that arrives while it has a free slot, and a task
        # done raises its reputation: which agents get work would be left to timing.
        hosts = ("a1", "a2")
        for agent, host in zip(agents, hosts, strict=True):
            status, body = coordinator.request(
                "POST",
                f"/v1/devices/{agent.device_id}/tags",
                {"add": [host]},
                token=coordinator.token("operator"),
            )
            assert status == 200, body
        tasks = [
            {
                **sha_task(0x70 + i, iterations=40_000, chunks=CHUNKS),
                "requires": {"tags": [hosts[i % 2]]},
            }
            for i in range(N_TASKS)
        ]
        ids = []
        for task in tasks:
            status, body = coordinator.request(
                "POST", "/v1/tasks", task, token=coordinator.token("client")
            )
            assert status == 202, body
            ids.append(body["task_id"])

        def views() -> list[dict[str, Any]] | None:
            vs = [
                coordinator.request("GET", f"/v1/tasks/{i}", token=coordinator.token("client"))[1]
                for i in ids
            ]
            done = all(
                v["state"] == "completed"
                and len(v["proofs"]) == 1
                and v["proofs"][0]["spot_check"] == "passed"
                for v in vs
            )
            return vs if done else None

        done = wait_for(views, timeout=40, interval=0.5)
        by_device: dict[str, int] = {}
        for task, view in zip(tasks, done, strict=True):
            proof = view["proofs"][0]
            assert proof["credit"] == "verified"
            by_device[proof["device_id"]] = by_device.get(proof["device_id"], 0) + 1
            expected = Trace(
                tuple(SHA.run_chunk(task["params"], c, CHUNKS) for c in range(CHUNKS))
            ).output
            assert bytes.fromhex(view["output"]) == expected
        # Work crossed the bridge to both agents, and each one's proofs passed spot-checks.
        assert by_device == {a.device_id: N_TASKS // 2 for a in agents}, by_device

        def chain() -> list[microblock.Microblock] | None:
            listing = coordinator.request("GET", "/v1/microblocks?limit=1000")[1]["microblocks"]
            blocks = [
                microblock.decode(
                    coordinator.request("GET", f"/v1/microblocks/{b['height']}/raw")[1]
                )
                for b in listing
            ]
            microblock.verify_chain(blocks)
            return blocks if len(receipts(blocks)) >= N_TASKS else None

        blocks = wait_for(chain, timeout=20, interval=0.5)
        expected_receipts = sorted((v["task_id"], v["proofs"][0]["device_id"]) for v in done)
        assert sorted(receipts(blocks)) == expected_receipts
        for agent in agents:
            final = agent.wait_status(lambda s: s["outbox"]["count"] == 0)
            assert final["outbox"]["rejected"] == 0
    finally:
        for agent in agents:
            agent.close()
        coordinator.stop()
    assert all(a.process is not None and a.process.returncode == 0 for a in agents)


def test_agent_unplugged_mid_task_delivers_every_proof_once(tmp_path: Path, lan: Lan) -> None:
    """A real network loss: the agent's port on the bridge goes down while it computes
    (packets to and from it are dropped, connections time out), then comes back."""
    n = 8
    coordinator = lan_coordinator(tmp_path, lan, max_inflight_per_device=n)
    agent: NetnsAgent | None = None
    try:
        coordinator.init()
        coordinator.start()
        status, tok = coordinator.request(
            "POST", "/v1/tokens", {"role": "enroll", "uses": 1}, token=coordinator.token("operator")
        )
        assert status == 201, tok
        agent = lan_agent(tmp_path, lan, "a1", tok["token"], max_queued_tasks=n)
        agent.start()
        agent.wait_status(lambda s: s["coordinator"]["state"] == "active", timeout=30)

        ids = []
        for i in range(n):
            # Long enough that a loaded machine still unplugs the cable mid-work.
            task = sha_task(0x90 + i, iterations=600_000, chunks=4)
            status, body = coordinator.request(
                "POST", "/v1/tasks", task, token=coordinator.token("client")
            )
            assert status == 202, body
            ids.append(body["task_id"])
        wait_for(
            lambda: all(
                [a["state"] for a in task_view(coordinator, i)["assignments"]]
                in (["accepted"], ["proved"])
                for i in ids
            ),
            timeout=30,
            interval=0.1,
        )
        lan.link("a1", "down")  # unplug
        try:
            before = {i for i in ids if task_view(coordinator, i)["proofs"]}
            assert len(before) <= n - 4, "the cable was pulled too late to be mid-task"
            # The agent finishes its work offline; the proofs wait in its outbox.
            agent.wait_status(
                lambda s: (
                    s["coordinator"]["last_error"]
                    and s["queue"]["count"] == 0
                    and s["outbox"]["count"] >= 2
                ),
                timeout=60,
            )
            waiting = [f.stem.split("-", 1)[1] for f in agent.files("outbox")]
            assert set(waiting) | before == set(ids) and len(waiting) == len(set(waiting))
            # Nothing reached the coordinator while the cable was out.
            assert {i for i in ids if task_view(coordinator, i)["proofs"]} == before
        finally:
            lan.link("a1", "up")  # plug back in

        assert_delivered_exactly_once(coordinator, agent, ids)  # type: ignore[arg-type]
    finally:
        if agent is not None:
            agent.close()
        coordinator.stop()
