"""The leader's host goes dark — its cable pulled, the process still running — on a real
(virtual) LAN: PostgreSQL, two coordinator nodes, two agents and a client, each in a
network namespace of its own, joined by a bridge.

Nothing ends the leader's process or its connections, so nothing is told: the database
has to notice the silence and free the lock, the cut-off leader has to notice it on its
own and stop leading first, the agents have to move to the other node — one from its
list of configured URLs, the other over mDNS, where only the leader advertises. Asserted:
leadership passes to the other node while the cable is out and is never held by both;
the agents keep working through the switch; once plugged back in, the old leader serves
as a follower; every task a node acknowledged completes, every stored proof is in
exactly one block and the chain verifies. The times (cut to step-down, cut to take-over)
are printed. Needs root, ``ip netns`` and PostgreSQL; skipped otherwise.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_agent_coordinator import decoded_chain, receipts
from tests.support import stores
from tests.support.netns import Lan, NetnsAgent, NetnsCoordinator, running_lan, unavailable
from tests.support.postgres import PostgresServer, binaries
from tests.support.settling import owed
from tests.support.waiting import wait_for

pytestmark = pytest.mark.skipif(
    bool(unavailable()) or binaries() is None,
    reason=unavailable() or "PostgreSQL is not installed",
)

PORT = 8443
HOSTS = ["db", "n1", "n2", "a1", "a2", "client"]

#: Run inside a namespace: asks ``url`` + path every ``every`` s, forever, and prints a
#: JSON line per answer (``t``: wall-clock time, the same clock in every namespace).
_POLL = r"""
import json, ssl, sys, time, urllib.request
a = json.loads(sys.argv[1])
ctx = ssl.create_default_context(cadata=a["ca_pem"])
while True:
    t = time.time()
    try:
        with urllib.request.urlopen(a["url"] + "/v1/node", timeout=2, context=ctx) as r:
            out = {"t": t, **json.load(r)}
    except Exception as exc:
        out = {"t": t, "error": type(exc).__name__}
    print(json.dumps(out), flush=True)
    time.sleep(a["every"])
"""

#: Run inside the client's namespace: ``burst`` tasks every ``every`` s, each sent to the
#: node that took the last one, else to the next; prints the id of each task a node
#: acknowledged (202).
_SUBMIT = r"""
import json, ssl, sys, time, urllib.request
a = json.loads(sys.argv[1])
ctx = ssl.create_default_context(cadata=a["ca_pem"])
urls, n = a["urls"], 0
while True:
    for _ in range(a["burst"]):
        n += 1
        body = {"kind": "sha256-chain", "chunks": 4,
                "params": {"seed": "%064x" % (n + 7), "iterations": 100000}}
        for _ in urls:
            req = urllib.request.Request(urls[0] + "/v1/tasks", method="POST",
                                         data=json.dumps(body).encode())
            req.add_header("Content-Type", "application/json")
            req.add_header("Authorization", "Bearer " + a["token"])
            try:
                with urllib.request.urlopen(req, timeout=3, context=ctx) as r:
                    print(json.load(r)["task_id"], flush=True)
                    break
            except Exception:
                urls = urls[1:] + urls[:1]
    time.sleep(a["every"])
"""


class Lines:
    """A script run in a namespace, its JSON (or text) lines collected as they come."""

    def __init__(self, ns: str, script: str, args: dict[str, Any]) -> None:
        self.lines: list[Any] = []
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, "-c", script, json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            if line := raw.strip():
                self.lines.append(json.loads(line) if line.startswith("{") else line)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self._thread.join(timeout=10)


@pytest.fixture
def lan() -> Iterator[Lan]:
    with running_lan("hd", HOSTS) as net:
        yield net


@pytest.fixture
def database(lan: Lan) -> Iterator[PostgresServer]:
    server = PostgresServer(listen=lan.addresses["db"], netns=lan.namespaces["db"]).start()
    try:
        yield server
    finally:
        server.stop()


def _node(root: Path, lan: Lan, name: str, url: str) -> NetnsCoordinator:
    address = lan.addresses[name]
    return NetnsCoordinator(
        root / name,
        settings={
            "server": {"host": address, "port": PORT, "mdns": True, "mdns_interfaces": address},
            "database": {"url": url},
            "cluster": {"node": name, "relay_address": address},
            "blocks": {"interval_s": 0.3},
            # One task at a time each, so the work is spread over both agents.
            "scheduler": {"max_inflight_per_device": 1},
        },
        ns=lan.namespaces[name],
        address=address,
    )


def _agent(root: Path, lan: Lan, host: str, token: str, urls: str | None) -> NetnsAgent:
    address = lan.addresses[host]
    return NetnsAgent(
        root / host,
        token=token,
        coordinator_url=urls,  # None: found over mDNS
        mdns=urls is None,
        mdns_interfaces=(address,),
        settings={"listen": {"host": address, "port": 0}},
        ns=lan.namespaces[host],
    )


def _leading(lines: list[Any], since: float) -> list[tuple[float, bool]]:
    """(time, leads) of each answer after ``since`` (unanswered polls left out)."""
    return [(x["t"], bool(x["leading"])) for x in lines if x["t"] >= since and "leading" in x]


def _overlaps(a: list[tuple[float, bool]], b: list[tuple[float, bool]]) -> list[float]:
    """The moments one node said it led while the other's last answer said it led too."""
    out = []
    for mine, theirs in ((a, b), (b, a)):
        for t, leads in mine:
            before = [lead for u, lead in theirs if u <= t]
            if leads and before and before[-1]:
                out.append(t)
    return out


def _explain(rows: Any, client: Lines, node: NetnsCoordinator) -> str:
    """What the cluster holds, for a failure's message."""
    held = [
        rows("SELECT state, count(*) AS n FROM tasks GROUP BY state"),
        rows("SELECT device_id, state, count(*) AS n FROM assignments GROUP BY 1, 2"),
        rows("SELECT device_id, count(*) AS n FROM proofs GROUP BY 1"),
        client.lines[-3:],
    ]
    return "\n".join(map(str, held)) + "\n" + node.log_text()[-3000:]


def test_the_leader_cut_off_steps_down_and_the_other_node_takes_over(
    tmp_path: Path, lan: Lan, database: PostgresServer
) -> None:
    url = database.new_database()
    rows = stores.pg_rows(database.local_url(url.rsplit("/", 1)[1]))

    n1, n2 = _node(tmp_path, lan, "n1", url), _node(tmp_path, lan, "n2", url)
    agents: list[NetnsAgent] = []
    scripts: list[Lines] = []
    try:
        n1.init()
        n1.start()
        wait_for(lambda: rows("SELECT 1 FROM leaders WHERE node = 'n1'"), timeout=30)
        shutil.copytree(n1.state_dir, n2.state_dir, ignore=shutil.ignore_patterns("*.port"))
        n2.init()
        n2.start()
        ca_pem = n1.ca_pem
        polls = {
            n: Lines(lan.namespaces[n], _POLL, {"url": node.url, "ca_pem": ca_pem, "every": 0.1})
            for n, node in (("n1", n1), ("n2", n2))
        }
        scripts += polls.values()
        token = n1.issue_token("enroll", uses=2)
        both = f"{n1.url},{n2.url}"
        agents += [
            _agent(tmp_path, lan, "a1", token, both),
            _agent(tmp_path, lan, "a2", token, None),
        ]
        for agent in agents:
            agent.start()
        for agent in agents:
            st = agent.wait_status(lambda s: s["coordinator"]["state"] == "active", timeout=60)
            assert st["coordinator"]["url"] == n1.url
        client = Lines(
            lan.namespaces["client"],
            _SUBMIT,
            {
                "urls": [n1.url, n2.url],
                "ca_pem": ca_pem,
                "token": n1.token("client"),
                "burst": 4,
                "every": 1.0,
            },
        )
        scripts.append(client)

        def proofs_by_device() -> dict[str, int]:
            got = rows("SELECT device_id, count(*) AS n FROM proofs GROUP BY device_id")
            return {r["device_id"]: r["n"] for r in got}

        # Both agents are working for n1, the leader, when its cable is pulled.
        wait_for(
            lambda: all(proofs_by_device().get(a.device_id, 0) >= 2 for a in agents),
            timeout=60,
            interval=0.2,
            explain=lambda: _explain(rows, client, n1),
        )
        before = proofs_by_device()
        cut = time.time()
        lan.link("n1", "down")
        try:
            wait_for(
                lambda: rows("SELECT 1 FROM leaders WHERE node = 'n2'"),
                timeout=60,
                interval=0.1,
                explain=lambda: n2.log_text()[-3000:],
            )
            term = rows("SELECT started_at FROM leaders WHERE node = 'n2'")[0]["started_at"]
            wait_for(
                lambda: any(not lead for _, lead in _leading(polls["n1"].lines, cut)),
                timeout=60,
                interval=0.1,
                explain=lambda: n1.log_text()[-3000:],
            )
            stepped_down = min(t for t, lead in _leading(polls["n1"].lines, cut) if not lead)
            # The agents moved to n2 and go on working there while n1 is dark.
            for agent in agents:
                agent.wait_status(lambda s: s["coordinator"]["url"] == n2.url, timeout=60)
            wait_for(
                lambda: all(
                    proofs_by_device().get(a.device_id, 0) >= before[a.device_id] + 2
                    for a in agents
                ),
                timeout=60,
                interval=0.2,
                explain=lambda: f"before: {before}\n" + _explain(rows, client, n2),
            )
        finally:
            lan.link("n1", "up")
        print(
            f"cut to n1 stepping down: {stepped_down - cut:.2f} s; "
            f"cut to n2's term: {term / 1000 - cut:.2f} s"
        )
        # Back on the network, n1 is a follower: n2 keeps the lead, n1 relays to it.
        wait_for(
            lambda: [x.get("leading") for x in polls["n1"].lines[-3:]] == [False] * 3,
            timeout=30,
        )
        # Until its connections to the database are back, it says so (503, retried);
        # never a bare 500.
        answers: list[int] = []

        def devices_via_n1() -> bool:
            status, _ = n1.request("GET", "/v1/devices", token=n1.token("operator"))
            answers.append(status)
            return status == 200

        wait_for(devices_via_n1, timeout=30, interval=0.5)
        assert set(answers) <= {200, 503}, answers
        time.sleep(2)
        client.stop()
        accepted = [x for x in client.lines if isinstance(x, str)]

        wait_for(lambda: not any(owed(rows, "tasks", "proofs").values()), timeout=120, interval=0.3)
        chain = decoded_chain(n1)  # served by the follower, read from the shared database
    finally:
        for script in scripts:
            script.stop()
        for agent in agents:
            agent.close()
        for node in (n1, n2):
            node.stop()
    n1_seen, n2_seen = _leading(polls["n1"].lines, 0), _leading(polls["n2"].lines, 0)
    assert not _overlaps(n1_seen, n2_seen), "two nodes led at once"
    assert stepped_down * 1000 < term, "n1 still led when n2 began"
    assert [r["node"] for r in rows("SELECT node FROM leaders ORDER BY term")] == ["n1", "n2"]
    completed = {r["task_id"] for r in rows("SELECT task_id FROM tasks WHERE state = 'completed'")}
    assert accepted and set(accepted) <= completed
    stored = {(r["task_id"], r["device_id"]) for r in rows("SELECT task_id, device_id FROM proofs")}
    in_blocks = receipts(chain)
    assert len(in_blocks) == len(set(in_blocks)), "a proof is in two blocks"
    assert set(in_blocks) == stored, "a stored proof is in no block"
    for agent in agents:
        assert agent.files("outbox") == []
