"""Benchmark 6, verification economy: what spot-checks cost the coordinator against what
the devices compute, and how surely they catch a device that fakes a fraction f of its
chunks, against the analytic 1 − (1 − f)^k.

Measured two ways in one run:

* **Live**: real agent processes (honest ones, and the agent's labelled demo-only cheat
  mode faking f = 5 %, 10 %, 25 % of chunk outputs) take tasks from a real coordinator
  until each cheater is quarantined or has proved 20 tasks. The coordinator's and the
  agents' CPU come from their process times (psutil); the re-execution work is what the
  coordinator recorded (chunks re-executed) priced at the devices' own CPU per chunk.
* **Selection over many tasks**: the coordinator's real challenge derivation
  (``spotcheck.challenge_indices`` on fresh block hashes) and check-rate rule
  (``reputation.should_check``) against the cheat mode's per-chunk choice, over
  thousands of tasks — enough for the catch probabilities to be measured, not guessed.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import sys
import time
from typing import Any

from aeamc.coordinator.config import SpotCheckConfig
from aeamc.shared import reputation, spotcheck

from . import procs
from .agentproc import Agent

FRACTIONS = (0.05, 0.10, 0.25)
TARGET_CPU_SHARE = 0.05
TARGET_CATCH_20 = 0.99
CHUNKS = 32
ITERATIONS = 4000


def analytic_within(f: float, k: int, tasks: int, cfg: SpotCheckConfig) -> float:
    """P(caught within ``tasks``) under the real check-rate rule, exactly (by passes)."""
    p = 1 - (1 - f) ** k
    alive = {0: 1.0}  # passes -> probability of being uncaught with that many passes
    for _ in range(tasks):
        nxt: dict[int, float] = {}
        for passes, prob in alive.items():
            c = reputation.check_probability(passes, trust_after=cfg.trust_after, floor=cfg.floor)
            nxt[passes] = nxt.get(passes, 0.0) + prob * (1 - c)
            nxt[passes + 1] = nxt.get(passes + 1, 0.0) + prob * c * (1 - p)
        alive = nxt
    return 1 - sum(alive.values())


def simulate(f: float, cfg: SpotCheckConfig, tasks: int, devices: int, rng: random.Random) -> dict:
    """Per-check catch rate over ``tasks`` checks, and P(caught within 20) over devices."""

    def one_check(task_id: str) -> bool:
        faked = {i for i in range(CHUNKS) if rng.random() < f}
        idx = spotcheck.challenge_indices(os.urandom(32), task_id, cfg.k, CHUNKS)
        return any(i in faked for i in idx)

    caught = sum(one_check(f"t-{n}") for n in range(tasks))
    within = 0
    for d in range(devices):
        passes = 0
        for n in range(20):
            if not reputation.should_check(
                passes, rng.random(), trust_after=cfg.trust_after, floor=cfg.floor
            ):
                continue
            if one_check(f"d{d}-t{n}"):
                within += 1
                break
            passes += 1
    return {
        "f": f,
        "per_check_measured": caught / tasks,
        "per_check_analytic": spotcheck.detection_probability(f, cfg.k),
        "checks": tasks,
        "within_20_measured": within / devices,
        "within_20_analytic": analytic_within(f, cfg.k, 20, cfg),
        "devices": devices,
    }


def _live_results(db: procs.Path, agents: dict[str, float]) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        per_device = {}
        for device_id, f in agents.items():
            proofs = conn.execute(
                "SELECT task_id, pot FROM proofs WHERE device_id=? ORDER BY seq", [device_id]
            ).fetchall()
            failed = conn.execute(
                "SELECT task_id FROM spot_checks WHERE device_id=? AND state='failed'",
                [device_id],
            ).fetchone()
            order = [t for t, _ in proofs]
            caught_at = order.index(failed[0]) + 1 if failed and failed[0] in order else None
            state = conn.execute(
                "SELECT state FROM devices WHERE device_id=?", [device_id]
            ).fetchone()[0]
            per_device[device_id] = {
                "f": f,
                "tasks_proved": len(order),
                "caught_at_task": caught_at,
                "state": state,
            }
        reexec = conn.execute(
            "SELECT coalesce(sum(reexecuted_chunks), 0) FROM spot_checks"
        ).fetchone()[0]
        cpu_ms = chunks = 0
        for (pot,) in conn.execute("SELECT pot FROM proofs WHERE pot != ''"):
            meta = json.loads(pot)["execution_metadata"]
            cpu_ms += meta["cpu_time_ms"]
            chunks += meta["chunks"]
        checks = dict(conn.execute("SELECT state, count(*) FROM spot_checks GROUP BY state"))
    finally:
        conn.close()
    return {
        "devices": per_device,
        "chunks_reexecuted": reexec,
        "chunks_proved": chunks,
        "device_cpu_ms_reported": cpu_ms,
        "spot_checks": checks,
    }


def live(
    cheaters_per_f: int, honest: int, timeout_s: float, fs: tuple[float, ...] = FRACTIONS
) -> dict[str, Any]:
    settings = {
        "scheduler": {"tick_s": 0.2},
        "blocks": {"interval_s": 1.0},
        "spot_checks": {"retry_s": 1.0},
    }
    fleet = [0.0] * honest + [f for f in fs for _ in range(cheaters_per_f)]
    with (
        procs.workspace("economy") as root,
        procs.Coordinator(root / "coordinator", settings) as coord,
    ):
        token = coord.enroll_token(len(fleet))
        agents: list[tuple[Agent, float]] = []
        try:
            for i, f in enumerate(fleet):
                extra: dict[str, Any] = {"heartbeat": {"interval_s": 1.0}}
                if f:
                    extra["demo"] = {"cheat_fraction": f}
                agents.append((Agent(root / f"agent-{i}", coord.url, token, extra).start(), f))
            ids = {a.device_id: f for a, f in agents}
            deadline = time.monotonic() + 60
            while True:
                devs = coord.call("GET", "/v1/devices", role="operator")["devices"]
                if sum(1 for d in devs if d["last_seq"] >= 2) == len(fleet):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("agents did not enroll in time")
                time.sleep(0.3)
            pids = [coord.process.pid] + [a.pid for a, _ in agents] if coord.process else []
            cpu0 = [procs.cpu_seconds(p) for p in pids]
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                status = coord.call("GET", "/v1/status", role="operator")
                queued = status["tasks"].get("queued", 0)
                for _ in range(max(0, 2 * len(fleet) - queued)):
                    coord.call(
                        "POST",
                        "/v1/tasks",
                        {
                            "kind": "sha256-chain",
                            "chunks": CHUNKS,
                            "params": {"seed": os.urandom(32).hex(), "iterations": ITERATIONS},
                        },
                        "client",
                    )
                devs = {
                    d["device_id"]: d
                    for d in coord.call("GET", "/v1/devices", role="operator")["devices"]
                }
                if all(
                    devs[d]["state"] == "quarantined" or devs[d]["record"]["completed"] >= 20
                    for d in ids
                ):
                    break
                time.sleep(0.5)
            # Let the checks already scheduled finish (their re-execution counts too).
            settle = time.monotonic() + 15
            while time.monotonic() < settle:
                status = coord.call("GET", "/v1/status", role="operator")
                if status["spot_checks"].get("pending", 0) == 0:
                    break
                time.sleep(0.5)
            cpu = [procs.cpu_seconds(p) - c for p, c in zip(pids, cpu0, strict=True)]
        finally:
            for a, _ in agents:
                a.stop()
        out = _live_results(coord.state_dir / "coordinator.db", ids)
    per_chunk_ms = out["device_cpu_ms_reported"] / max(1, out["chunks_proved"])
    out["coordinator_cpu_s"] = cpu[0] if cpu else 0.0
    out["agents_cpu_s"] = sum(cpu[1:])
    out["coordinator_cpu_share_all_work"] = out["coordinator_cpu_s"] / max(1e-9, sum(cpu[1:]))
    out["reexecution_share"] = (out["chunks_reexecuted"] * per_chunk_ms) / max(
        1e-9, out["device_cpu_ms_reported"]
    )
    return out


def lifetime_share(tasks: int, cfg: SpotCheckConfig, chunks: int = CHUNKS) -> float:
    """Expected re-execution share over an honest device's first ``tasks`` tasks under the
    real check-rate rule: checked tasks × k chunks over all chunks computed."""
    alive = {0: 1.0}
    checks = 0.0
    for _ in range(tasks):
        nxt: dict[int, float] = {}
        for passes, prob in alive.items():
            c = reputation.check_probability(passes, trust_after=cfg.trust_after, floor=cfg.floor)
            checks += prob * c
            nxt[passes] = nxt.get(passes, 0.0) + prob * (1 - c)
            nxt[passes + 1] = nxt.get(passes + 1, 0.0) + prob * c
        alive = nxt
    return checks * min(cfg.k, chunks) / (tasks * chunks)


def measure(
    tasks: int = 20_000,
    devices: int = 4000,
    *,
    cheaters_per_f: int = 2,
    honest: int = 2,
    timeout_s: float = 150.0,
    fs: tuple[float, ...] = FRACTIONS,
) -> dict[str, Any]:
    cfg = SpotCheckConfig()
    rng = random.Random()
    sims = [simulate(f, cfg, tasks, devices, rng) for f in fs]
    run = live(cheaters_per_f, honest, timeout_s, fs)
    ten = next((s for s in sims if s["f"] == 0.10), None)
    return {
        "k": cfg.k,
        "trust_after": cfg.trust_after,
        "floor": cfg.floor,
        "chunks_per_task": CHUNKS,
        "selection": sims,
        "lifetime_reexecution_share": {str(n): lifetime_share(n, cfg) for n in (20, 100, 1000)},
        "live": run,
        "target_cpu_share": TARGET_CPU_SHARE,
        "target_catch_20": TARGET_CATCH_20,
        "cpu_target_met": run["reexecution_share"] <= TARGET_CPU_SHARE,
        "catch_target_met": None if ten is None else ten["within_20_measured"] >= TARGET_CATCH_20,
    }


if __name__ == "__main__":
    json.dump(measure(2000, 500, cheaters_per_f=1, honest=1, timeout_s=60.0), sys.stdout, indent=2)
