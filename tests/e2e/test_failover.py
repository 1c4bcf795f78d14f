"""Two coordinator nodes on one PostgreSQL database, a fleet of real agents working, and the
leader killed with -9 while blocks form and an anchor transaction is on its way.

The nodes listen on two loopback addresses (127.0.0.2 and 127.0.0.3, one port), share the
database, the coordinator's identity, CA and anchoring wallet (copied files, as an operator
provisions them), and each agent knows both addresses. The leader is killed twice: first
node a, then, after it is back as a follower, node b. The test asserts what fail-over
promises: the other node takes the lead (the take-over time is printed), the agents keep
working through the switch, every proof acknowledged is in exactly one block, the chain
of blocks verifies end to end, anchoring resumes with each root on chain once and every
block under exactly one final root — and at no moment do two nodes lead.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from tests.anchoring.conftest import assert_exactly_once, fund, miner
from tests.anchoring.test_process import events
from tests.e2e.test_agent_coordinator import decoded_chain, free_port, receipts, sha_task
from tests.fixtures.anvil import AnvilNode, anvil, anvil_bin  # noqa: F401
from tests.support import stores
from tests.support.agent import AgentProcess
from tests.support.coordinator import CoordinatorProcess
from tests.support.settling import owed
from tests.support.waiting import wait_for

CHAIN = {"anchor_interval_s": 0.3, "poll_s": 0.1, "confirmations": 2, "rpc_timeout_s": 3.0}
ADDRESSES = {"a": "127.0.0.2", "b": "127.0.0.3"}
AGENTS = 3


def _node(root: Path, name: str, port: int, url: str, rpc: str) -> CoordinatorProcess:
    host = ADDRESSES[name]
    return CoordinatorProcess(
        root / name,
        settings={
            "server": {"host": host, "port": port},
            "database": {"url": url},
            "cluster": {"node": name, "relay_address": host},
            "chain": {"rpc_url": rpc, **CHAIN},
            "blocks": {"interval_s": 0.3},
        },
    )


def _provision_like(first: CoordinatorProcess, other: CoordinatorProcess) -> None:
    """Give ``other`` the first node's identity, CA, wallet, tokens and contract: what an
    operator copies (or points at on a PKCS#11 token) when adding a node."""
    shutil.copytree(first.state_dir, other.state_dir, ignore=shutil.ignore_patterns("*.port"))
    contract = re.search(r'contract = "(0x[0-9a-fA-F]{40})"', first.config_path.read_text())
    assert contract is not None
    other.settings["chain"]["contract"] = contract.group(1)
    other.init()


class LeaderWatch:
    """Asks both nodes, every 50 ms, who they are (``/v1/node``, answered by each node
    itself) and keeps every moment at which two of them said they lead."""

    def __init__(self, nodes: dict[str, CoordinatorProcess]) -> None:
        self.nodes = nodes
        self.both: list[float] = []
        self.leaders: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _leading(self, node: CoordinatorProcess) -> bool:
        if node.process is None or node.process.poll() is not None:
            return False
        try:
            status, body = node.request("GET", "/v1/node")
        except Exception:
            return False
        return status == 200 and bool(body.get("leading"))

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            now = time.monotonic()
            leading = [name for name, node in self.nodes.items() if self._leading(node)]
            if len(leading) > 1:
                self.both.append(now)
            if len(leading) == 1 and (not self.leaders or self.leaders[-1][1] != leading[0]):
                self.leaders.append((now, leading[0]))

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()


class Submitter:
    """A client submitting a task every 0.2 s to whichever node answers; keeps the ids of
    the tasks a node acknowledged (202)."""

    def __init__(self, nodes: list[CoordinatorProcess]) -> None:
        self.nodes = nodes
        self.accepted: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        seed = 0
        while not self._stop.wait(0.2):
            seed += 1
            for node in self.nodes:
                if node.process is None or node.process.poll() is not None:
                    continue
                try:
                    status, body = node.request(
                        "POST",
                        "/v1/tasks",
                        sha_task(seed % 250, iterations=500, chunks=4),
                        token=node.token("client"),
                    )
                except Exception:
                    continue
                if status == 202:
                    self.accepted.append(body["task_id"])
                    break

    def __enter__(self) -> Submitter:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def _kill_mid_anchor(
    leader: CoordinatorProcess, rows: Any, name: str, successor: str, watch: LeaderWatch
) -> float:
    """Kill ``leader`` with -9 once an anchor transaction is sent and not final and
    receipts wait for a block; the seconds until ``successor`` starts its term."""
    assert watch.both == [], f"two nodes led at once, {len(watch.both)} times seen"
    wait_for(
        lambda: (
            rows("SELECT 1 FROM anchors WHERE state = 'sent' LIMIT 1")
            and rows(
                "SELECT 1 FROM proofs WHERE seq > (SELECT coalesce(max(last_seq), 0) "
                "FROM blocks) LIMIT 1"
            )
        ),
        timeout=120,
        interval=0.02,
        explain=lambda: leader.log_text()[-3000:],
    )
    killed_ms = time.time() * 1000
    leader.kill()
    term = wait_for(
        lambda: rows(
            f"SELECT started_at FROM leaders WHERE node = '{successor}' "
            f"AND started_at >= {int(killed_ms) - 1000} ORDER BY term DESC LIMIT 1"
        ),
        timeout=60,
        interval=0.02,
    )
    took = (term[0]["started_at"] - killed_ms) / 1000
    print(f"take-over {name} -> {successor}: {took:.2f} s")
    return took


def _unsettled(rows: Any) -> str:
    """What keeps the cluster from having settled, for a failure's message."""
    return (
        "\n".join(
            str(r)
            for sql in (
                "SELECT t.task_id, t.state, a.device_id, a.state AS assignment, a.reason "
                "FROM tasks t LEFT JOIN assignments a ON a.task_id = t.task_id "
                "WHERE t.state NOT IN ('completed', 'disputed', 'failed')",
                "SELECT seq, task_id FROM proofs "
                "WHERE seq > (SELECT coalesce(max(last_seq), 0) FROM blocks)",
                "SELECT b.height, b.anchor_id, x.state FROM blocks b "
                "LEFT JOIN anchors x ON x.id = b.anchor_id WHERE x.state IS DISTINCT FROM 'final'",
                "SELECT term, node, started_at FROM leaders ORDER BY term",
            )
            for r in [sql, *rows(sql)[:20]]
        )
        + "\n"
    )


def test_the_leader_killed_mid_block_and_mid_anchor_hands_over_and_nothing_is_lost(
    anvil: AnvilNode,  # noqa: F811
    tmp_path: Path,
    agents: list[AgentProcess],
) -> None:
    url = stores.server().new_database()
    rows = stores.pg_rows(url)
    port = free_port()
    a = _node(tmp_path, "a", port, url, anvil.url)
    b = _node(tmp_path, "b", port, url, anvil.url)
    nodes = {"a": a, "b": b}
    a.init()
    refused = a.cli("chain", "deploy", check=False)
    wallet = re.search(r"0x[0-9a-fA-F]{40}", refused.stderr)
    assert wallet is not None, refused.stderr
    fund(anvil, wallet.group(0))
    a.cli("chain", "deploy")
    _provision_like(a, b)
    anvil.set_automine(False)
    watch = LeaderWatch(nodes)
    try:
        watch.start()
        a.start()
        wait_for(lambda: rows("SELECT 1 FROM leaders WHERE node = 'a'"), timeout=30)
        b.start()
        both = ",".join(f"https://{ADDRESSES[n]}:{port}" for n in ("a", "b"))
        token = a.issue_token("enroll", uses=AGENTS)
        for i in range(AGENTS):
            agent = AgentProcess(
                tmp_path / f"agent{i}", coordinator_url=both, token=token, mdns=False
            )
            agents.append(agent)
            agent.start()
        with miner(anvil, 0.15), Submitter([a, b]) as client:
            first = _kill_mid_anchor(a, rows, "a", "b", watch)
            a.start()  # back, as a follower
            proofs_before = len(rows("SELECT seq FROM proofs"))
            wait_for(lambda: len(rows("SELECT seq FROM proofs")) >= proofs_before + 4, 60)
            second = _kill_mid_anchor(b, rows, "b", "a", watch)
            b.start()
            # The agents keep working through both switches: more proofs arrive.
            proofs_before = len(rows("SELECT seq FROM proofs"))
            wait_for(lambda: len(rows("SELECT seq FROM proofs")) >= proofs_before + 4, 60)
        accepted = list(client.accepted)

        def settled() -> bool:
            return not any(owed(rows).values())

        with miner(anvil, 0.15):
            wait_for(
                settled,
                timeout=180,
                interval=0.2,
                explain=lambda: _unsettled(rows) + a.log_text()[-3000:] + b.log_text()[-3000:],
            )
        chain = decoded_chain(a)  # the blocks as served, their hash chain checked
    finally:
        watch.stop()
        for node in (a, b):
            node.stop()
    print(f"take-over times: {first:.2f} s, {second:.2f} s; {len(accepted)} tasks")
    # Leadership was exclusive throughout, and it did change hands both times.
    assert watch.both == [], f"two nodes led at once {len(watch.both)} times"
    assert [name for _, name in watch.leaders][:3] == ["a", "b", "a"]
    terms = rows("SELECT term, node FROM leaders ORDER BY term")
    assert [t["node"] for t in terms][:3] == ["a", "b", "a"]
    # Every task a node acknowledged was done, and every proof stored is in one block.
    completed = {r["task_id"] for r in rows("SELECT task_id FROM tasks WHERE state = 'completed'")}
    assert accepted and set(accepted) <= completed
    stored = {(r["task_id"], r["device_id"]) for r in rows("SELECT task_id, device_id FROM proofs")}
    in_blocks = receipts(chain)
    assert len(in_blocks) == len(set(in_blocks)), "a proof is in two blocks"
    assert set(in_blocks) == stored, "a stored proof is in no block"
    # Anchoring resumed: each root on chain once, every block under exactly one final root.
    deployed = re.search(r'contract = "(0x[0-9a-fA-F]{40})"', a.config_path.read_text())
    assert deployed is not None
    assert_exactly_once(rows, events(anvil, deployed.group(1)))
    # Nothing an agent was told was accepted is missing: their outboxes are empty.
    for agent in agents:
        assert agent.files("outbox") == []
