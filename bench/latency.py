"""Benchmark 7, latency: a task submitted by a client until its PoT is accepted, minus the
device's chunk compute time, p50/p99 on loopback, with a real agent process.

The client (a load-generator process) submits one task at a time and waits for its
proof, so no task queues behind another. The times are the coordinator's own records
(task ``created_at``, proof ``accepted_at``) and the compute time is the one the device
signed in its PoT. Reference, in the same run: the round trip of one small API request.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from typing import Any

from . import procs, stats
from .agentproc import Agent

TARGET_P50_MS = 20.0


def _wait_device(coord: procs.Coordinator, device_id: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        devices = coord.call("GET", "/v1/devices", role="operator")["devices"]
        if any(d["device_id"] == device_id and d["last_seq"] >= 2 for d in devices):
            return
        time.sleep(0.2)
    raise RuntimeError("the agent did not enroll and heartbeat in time")


def _rows(db: procs.Path, task_ids: list[str]) -> list[dict[str, Any]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        out = []
        for t in task_ids:
            created, accepted, pot = conn.execute(
                "SELECT t.created_at, p.accepted_at, p.pot FROM tasks t JOIN proofs p "
                "ON p.task_id = t.task_id WHERE t.task_id=?",
                [t],
            ).fetchone()
            compute = json.loads(pot)["execution_metadata"]["execution_time_ms"]
            out.append({"total_ms": accepted - created, "compute_ms": compute})
        return out
    finally:
        conn.close()


def measure(tasks: int = 40, warmup: int = 3, profile: procs.Path | None = None) -> dict[str, Any]:
    settings = {"spot_checks": {"retry_s": 1.0}}
    with (
        procs.workspace("latency") as root,
        procs.Coordinator(root / "coordinator", settings) as coord,
    ):
        agent = Agent(
            root / "agent",
            coord.url,
            coord.enroll_token(1),
            {"heartbeat": {"interval_s": 2.0}},
            profile=profile,
        ).start()
        try:
            _wait_device(coord, agent.device_id)
            client = f"--client-token={coord.token('client')}"
            args = ["latency", "--url", coord.url, f"--ca={coord.ca_file}", client]
            procs.run_loadgen([*args, "--tasks", str(warmup)], 120, root / "loadgen.log")
            got = procs.run_loadgen([*args, "--tasks", str(tasks)], 600, root / "loadgen.log")
        finally:
            agent.stop()
        rows = _rows(coord.state_dir / "coordinator.db", got["tasks"])
    overhead = [r["total_ms"] - r["compute_ms"] for r in rows]
    p50 = stats.percentile(overhead, 50)
    rtt = got["rtt_ms"]
    return {
        "tasks": len(rows),
        "overhead_p50_ms": p50,
        "overhead_p99_ms": stats.percentile(overhead, 99),
        "overhead_ms": stats.summary(overhead),
        "compute_ms": stats.summary([r["compute_ms"] for r in rows]),
        "reference_rtt_ms": stats.summary(rtt),
        "ratio_p50_to_rtt": p50 / stats.percentile(rtt, 50),
        "target_p50_ms": TARGET_P50_MS,
        "target_met": p50 <= TARGET_P50_MS,
    }


if __name__ == "__main__":
    json.dump(measure(int(sys.argv[1]) if len(sys.argv) > 1 else 10), sys.stdout, indent=2)
