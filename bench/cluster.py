"""Benchmark 9, several nodes: the ingestion and fleet loads of benchmarks 1 and 2 on two
coordinator nodes over one PostgreSQL database, against one node on SQLite in the same run.

The loads are those of ``ingest`` and ``fleet`` (real enrolled devices, real assignments,
signed proofs, signed heartbeats), split evenly: half the devices talk to each node, which
serves their heartbeats and proofs itself. Each node runs one worker process, so the two
nodes have as many coordinator processes as the single node has workers on this machine's
cores. The PostgreSQL server runs on the same machine, from Debian's package, with its
defaults plus ``fsync``/``synchronous_commit`` on (every ``202`` committed), and its CPU is
counted apart.

Both nodes share this machine's cores, so the figures say what the PostgreSQL store, the
write lock shared by all nodes and the relay cost against SQLite, not what a second host
would add. The single-node figures it is compared with are the ``ingestion`` and ``fleet``
entries of the same run (``report`` puts them side by side).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.postgres import PostgresServer

from . import fleet, ingest, limits, procs, stats

ADDRESSES = ("127.0.0.2", "127.0.0.3")


@contextlib.contextmanager
def _database() -> Iterator[tuple[str, PostgresServer]]:
    server = PostgresServer().start()
    try:
        yield server.new_database(), server
    finally:
        server.stop()


@contextlib.contextmanager
def two_nodes(root: Path, url: str, settings: dict[str, Any]) -> Iterator[list[procs.Coordinator]]:
    """Two started nodes, a then b, on one database: b provisioned with a's identity, CA
    and tokens, as an operator adds a node."""
    nodes: list[procs.Coordinator] = []
    try:
        for i, host in enumerate(ADDRESSES):
            node = procs.Coordinator(
                root / f"node{i}",
                procs.merge(
                    settings,
                    {
                        "server": {"host": host, "workers": 1},
                        "database": {"url": url},
                        "cluster": {"node": f"node{i}", "relay_address": host},
                    },
                ),
                host=host,
            )
            if nodes:
                shutil.copytree(nodes[0].state_dir, node.state_dir, ignore=_runtime_files)
            nodes.append(node.start())
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _runtime_files(_: str, names: list[str]) -> list[str]:
    return [n for n in names if n.endswith(".port") or n in ("workers", "tls")]


def _pids(nodes: list[procs.Coordinator], server: PostgresServer) -> dict[str, int]:
    out = {f"node{i}": n.process.pid for i, n in enumerate(nodes) if n.process}
    out["postgresql"] = server.postmaster_pid()
    return out


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    return {name: procs.cpu_seconds(pid) for name, pid in pids.items()}


def _ingestion(
    nodes: list[procs.Coordinator],
    server: PostgresServer,
    *,
    runs: int,
    per_run: int,
    batch: int,
    concurrency: int,
    reference_s: float,
    devices: int,
) -> dict[str, Any]:
    """Benchmark 1's rounds with the devices spread over the nodes (device i talks to node
    i mod n) and the tasks over the devices: one load generator, so every task goes to a
    device it holds."""
    tasks = runs * per_run * 2
    gen = ingest.proof_devices(nodes, devices, tasks, nodes[0].root / "loadgen.log")
    try:
        refs, single, batched, errors = [], [], [], []
        pids = _pids(nodes, server)
        cores: dict[str, list[float]] = {}
        for _ in range(runs):
            refs.append(ingest.reference_rate(reference_s))
            one = procs.command(gen, f"single {per_run} {concurrency}", "single round")
            before, t0 = _cpu(pids), time.monotonic()
            many = procs.command(gen, f"batch {per_run} {batch} {concurrency}", "batch round")
            spent = time.monotonic() - t0
            for name, seconds in _cpu(pids).items():
                cores.setdefault(name, []).append((seconds - before[name]) / spent)
            for got, out in ((one, single), (many, batched)):
                out.append(got["accepted"] / got["seconds"])
                if got["accepted"] != got["proofs"]:
                    errors.append(got["errors"])
    finally:
        gen.kill()
        gen.wait()
    return {
        "nodes": len(nodes),
        "proofs_per_round": per_run,
        "batch_size": batch,
        "concurrency": concurrency,
        "devices": devices,
        "batched_cpu_cores_by_process": {k: stats.summary(v) for k, v in cores.items()},
        "reference_verifies_per_s": stats.summary(refs),
        "single_per_s": stats.summary(single),
        "batched_per_s": stats.summary(batched),
        "single_ratio": stats.ratio_summary(single, refs),
        "batched_ratio": stats.ratio_summary(batched, refs),
        "refused": errors,
    }


def _fleet(
    nodes: list[procs.Coordinator],
    server: PostgresServer,
    sizes: tuple[int, ...],
    duration: float,
    interval_s: float,
) -> list[dict[str, Any]]:
    out = []
    token = nodes[0].enroll_token(max(sizes))
    pids = _pids(nodes, server)
    for size in sizes:
        per_node = max(1, size // len(nodes))
        gens = [
            procs.spawn_loadgen(
                [
                    "fleet",
                    "--url",
                    node.url,
                    f"--ca={node.ca_file}",
                    # The same devices at every size, as in benchmark 2: each size adds
                    # devices, so one token of the largest size's uses enrolls them all.
                    f"--tls-dir={node.root / 'fleet-devices'}",
                    f"--enroll-token={token}",
                    f"--seed=fleet-{i}",
                    "--devices",
                    str(per_node),
                    "--interval",
                    str(interval_s),
                    "--duration",
                    str(duration),
                ],
                node.root / f"fleet-{size}.log",
            )
            for i, node in enumerate(nodes)
        ]
        try:
            for gen in gens:
                procs.read_json_line(gen, "the fleet to reach its pace")
            before, t0 = _cpu(pids), time.monotonic()
            results = [procs.read_json_line(gen, "the fleet's results") for gen in gens]
            spent = time.monotonic() - t0
            cores = {k: (v - before[k]) / spent for k, v in _cpu(pids).items()}
        finally:
            for gen in gens:
                gen.kill()
                gen.wait()
        latencies = [ms for r in results for ms in r["latencies_ms"]]
        accepted = sum(r["accepted"] / r["window_s"] for r in results)
        offered = per_node * len(nodes) / interval_s
        out.append(
            {
                "devices": per_node * len(nodes),
                "offered_per_s": offered,
                "accepted_per_s": accepted,
                "ratio_to_offered": accepted / offered,
                "p50_ms": stats.percentile(latencies, 50),
                "p99_ms": stats.percentile(latencies, 99),
                "errors": sum(r["errors"] for r in results),
                "shed": sum(r.get("shed", 0) for r in results),
                "enroll_errors": sum(r["enroll_errors"] for r in results),
                "cpu_cores_by_process": cores,
            }
        )
    return out


def measure(
    *,
    ingestion: dict[str, Any],
    sizes: tuple[int, ...],
    duration: float,
    interval_s: float = fleet.INTERVAL_S,
) -> dict[str, Any]:
    """Both loads on two nodes over PostgreSQL (``ingestion``: the keyword arguments of
    ``ingest.measure``'s rounds)."""
    procs.raise_fd_limit()
    with procs.workspace("cluster") as root, _database() as (url, server):
        ingest_url = server.new_database()
        # Each device may hold only its share of the tasks: without that limit the
        # best-ranked device would be given them all, and so would its node.
        tasks = ingestion["runs"] * ingestion["per_run"] * 2
        share = -(-tasks // ingestion["devices"])
        settings = procs.merge(ingest.SETTINGS, {"scheduler": {"max_inflight_per_device": share}})
        with two_nodes(root / "ingestion", ingest_url, settings) as nodes:
            proofs = _ingestion(nodes, server, **ingestion)
        with two_nodes(root / "fleet", url, fleet.SETTINGS) as nodes:
            heartbeats = _fleet(nodes, server, sizes, duration, interval_s)
    return {
        "nodes": 2,
        "workers_per_node": 1,
        "cores": os.cpu_count(),
        "store": "postgresql",
        "ingestion": proofs,
        "fleet": {"interval_s": interval_s, "window_s": duration, "sizes": heartbeats},
    }


def quick() -> dict[str, Any]:
    """Tiny sizes: a check of the harness, not a measurement (``--quick``)."""
    return measure(
        ingestion={
            "runs": 1,
            "per_run": 10,
            "batch": 5,
            "concurrency": 2,
            "reference_s": 0.3,
            "devices": 2,
        },
        sizes=(20,),
        duration=1.0,
        interval_s=0.5,
    )


def _spread(s: dict[str, Any], digits: int) -> str:
    return f"{s['median']:,.{digits}f} ({s['min']:,.{digits}f}–{s['max']:,.{digits}f})"


def _cores(cpu: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v['median'] if isinstance(v, dict) else v:.2f}" for k, v in cpu.items())


def render(g: dict[str, Any], r: dict[str, Any]) -> str:
    """The section of docs/performance.md: two nodes beside this run's single node."""
    ing, one = g["ingestion"], r.get("ingestion")
    rows = [
        "| | one node, SQLite | two nodes, PostgreSQL |",
        "| --- | ---: | ---: |",
    ]
    if one:
        for label, key in (("one per request", "single"), ("batches", "batched")):
            rows.append(
                f"| PoTs accepted per s, {label} | {_spread(one[f'{key}_per_s'], 0)} "
                f"| {_spread(ing[f'{key}_per_s'], 0)} |"
            )
            rows.append(
                f"| the same ÷ raw Ed25519 (this run's reference) "
                f"| {_spread(one[f'{key}_ratio'], 3)} | {_spread(ing[f'{key}_ratio'], 3)} |"
            )
    single_fleet = {s["devices"]: s for s in (r.get("fleet") or {}).get("sizes", [])}
    fleet_rows = []
    for s in g["fleet"]["sizes"]:
        base = single_fleet.get(s["devices"])
        same = (
            f"{base['accepted_per_s']:,.0f} /s, p99 {base['p99_ms']:,.1f} ms, "
            f"{base['errors'] + base['enroll_errors']:,} errors, {base.get('shed', 0):,} shed"
            if base
            else "–"
        )
        fleet_rows.append(
            f"| {s['devices']:,} | {s['offered_per_s']:,.0f} | {same} "
            f"| {s['accepted_per_s']:,.0f} /s, p99 {s['p99_ms']:,.1f} ms, "
            f"{s['errors'] + s['enroll_errors']:,} errors, {s['shed']:,} shed "
            f"| {_cores(s['cpu_cores_by_process'])} |"
        )
    cpu = _cores(ing["batched_cpu_cores_by_process"])
    interval, window = g["fleet"]["interval_s"], g["fleet"]["window_s"]
    refused = "" if not ing["refused"] else " except: " + str(ing["refused"])[:300]
    return f"""## 9. Two nodes over PostgreSQL

The loads of benchmarks 1 and 2, split evenly over two coordinator nodes (one worker
each) on one PostgreSQL database, on this same machine: half the devices talk to each
node, and in the ingestion rounds each device holds an equal share of the tasks. The
single-node figures are sections 1 and 2 of this run (SQLite, a worker per core). Both
nodes and the PostgreSQL server share this machine's {g["cores"]} cores, so this
measures what the shared store, the write lock across nodes and the relay cost, not
what a second host adds.

**Ingestion** ({ing["proofs_per_round"]} proofs per round, batches of {ing["batch_size"]},
{ing["devices"]} devices; CPU while batches were sent: {cpu} cores):

{chr(10).join(rows)}

**Fleet** (a heartbeat per device every {interval:g} s, {window:g} s measured):

| devices | offered /s | one node, SQLite | two nodes, PostgreSQL | CPU, two nodes (cores) |
| ---: | ---: | --- | --- | --- |
{chr(10).join(fleet_rows)}

Every proof of every round was accepted{refused}.
{_analysis(g, r)}"""


def _analysis(g: dict[str, Any], r: dict[str, Any]) -> str:
    """``limits.CLUSTER`` with this run's figures (empty without the single node's)."""
    ing, one = g["ingestion"], r.get("ingestion")
    sizes = {s["devices"]: s for s in g["fleet"]["sizes"]}
    if not one or not sizes:
        return ""
    busy = sizes.get(5000) or sizes[max(sizes)]
    cpu = ing["batched_cpu_cores_by_process"]
    nodes = [k for k in cpu if k != "postgresql"]

    def share(key: str) -> str:
        return f"{ing[key]['median'] / one[key]['median']:.2f}"

    return limits.CLUSTER.format(
        pg=f"{cpu['postgresql']['median']:.2f}",
        nodes=" and ".join(f"{cpu[k]['median']:.2f}" for k in nodes),
        batched=share("batched_per_s"),
        single=share("single_per_s"),
        devices=f"{busy['devices']:,}",
        cpu=f"{sum(busy['cpu_cores_by_process'].values()):.2f}",
        shed=f"{busy['shed']:,}",
    )


if __name__ == "__main__":
    print(quick(), file=sys.stdout)
