"""Benchmark 6, verification economy: what spot-checks cost the coordinator against what
the devices compute, and how surely they catch a device that fakes a fraction f of its
chunks — at tasks of 32 and of 64 chunks.

Measured two ways in one run:

* **Live**: real agent processes (honest ones, and the agent's labelled demo-only cheat
  mode faking f = 5 %, 10 %, 25 % of chunk outputs) take tasks from a real coordinator
  until each cheater is quarantined or has proved 20 tasks. Tasks alternate between the
  sizes, each size with the same compute per task (iterations scaled), so one run prices
  both. The coordinator's and the agents' CPU come from their process times (psutil); the
  re-execution work is what the coordinator recorded (chunks re-executed, per task size)
  priced at the devices' own CPU per chunk of that size.
* **Selection over many tasks**: the coordinator's real challenge derivation
  (``spotcheck.challenge_indices`` on fresh block hashes) and check-rate rule
  (``SpotCheckConfig.should_check``) against the cheat mode's per-chunk choice, over
  thousands of tasks and devices per size — enough for the catch probabilities to be
  measured, not guessed.

Next to them, the floor no sampling policy can go under: a device faking each chunk with
probability f escapes n openings with probability (1 − f)^n, and (1 − f)^X is convex in
the number X of openings, so any policy, randomised or not, needs E[X] ≥ ln(1 − P) /
ln(1 − f) openings over the first N tasks — a re-execution share of at least that over
N · chunks.
"""

from __future__ import annotations

import json
import math
import os
import random
import sqlite3
import sys
import time
from typing import Any

from aeamc.coordinator.config import SpotCheckConfig
from aeamc.shared import reputation, spotcheck
from tests.support.passes import over_passes

from . import procs
from .agentproc import Agent

FRACTIONS = (0.05, 0.10, 0.25)
TARGET_CPU_SHARE = 0.05
TARGET_CATCH_20 = 0.99
TARGET_FRACTION = 0.10
TARGET_TASKS = 20
#: Task sizes measured; the targets are judged at the last one, where they can both hold.
CHUNK_SIZES = (32, 64)
#: SHA-256 iterations per chunk of a 32-chunk task; larger tasks get proportionally fewer,
#: so every task costs the devices the same.
ITERATIONS_32 = 4000


def _rate(cfg: SpotCheckConfig, chunks: int, old_rule: bool) -> Any:
    """The check probability as a function of passes: the configured rule, or the one it
    replaced (every task until ``trust_after`` passes)."""
    if old_rule:
        return lambda passes: reputation.check_probability(
            passes, trust_after=cfg.trust_after, floor=cfg.floor
        )
    return lambda passes: cfg.check_probability(passes, chunks)


def analytic_within(
    f: float, cfg: SpotCheckConfig, tasks: int, chunks: int, *, old_rule: bool = False
) -> float:
    """P(caught within ``tasks``) under the check-rate rule, exactly (by passes)."""
    q = reputation.catch_per_check(f, cfg.k, chunks)
    return over_passes(tasks, _rate(cfg, chunks, old_rule), q)[1]


def lifetime_share(
    tasks: int, cfg: SpotCheckConfig, chunks: int, *, old_rule: bool = False
) -> float:
    """Expected re-execution share over an honest device's first ``tasks`` tasks under the
    check-rate rule: checked tasks × k chunks over all chunks computed."""
    checks, _ = over_passes(tasks, _rate(cfg, chunks, old_rule))
    return checks * min(cfg.k, chunks) / (tasks * chunks)


def floor_share(chunks: int, k: int, f: float = TARGET_FRACTION, tasks: int = TARGET_TASKS) -> dict:
    """The least re-execution share any policy can have and still catch f within ``tasks``
    with probability ``TARGET_CATCH_20`` (see the module docstring); and, for comparison,
    what k distinct openings per check need against a device that fakes exactly
    ⌈f · chunks⌉ chunks of every task (without replacement, each check catches more)."""
    faked = math.ceil(f * chunks)
    escape = math.comb(chunks - faked, k) / math.comb(chunks, k) if chunks >= k else 0.0
    fixed_checks = 1 if escape == 0 else math.ceil(math.log1p(-TARGET_CATCH_20) / math.log(escape))
    openings = math.log1p(-TARGET_CATCH_20) / math.log1p(-f)
    return {
        "openings": openings,
        "share": openings / (tasks * chunks),
        "share_whole_openings": math.ceil(openings) / (tasks * chunks),
        "least_chunks_for_target": math.ceil(openings / (tasks * TARGET_CPU_SHARE)),
        "fixed_count": {
            "faked": faked,
            "checks": fixed_checks,
            "share": fixed_checks * min(k, chunks) / (tasks * chunks),
        },
    }


def simulate(
    f: float, cfg: SpotCheckConfig, chunks: int, *, tasks: int, devices: int, rng: random.Random
) -> dict:
    """Per-check catch rate over ``tasks`` checks, and P(caught within 20) over devices."""

    def one_check(task_id: str) -> bool:
        faked = {i for i in range(chunks) if rng.random() < f}
        idx = spotcheck.challenge_indices(rng.randbytes(32), task_id, cfg.k, chunks)
        return any(i in faked for i in idx)

    caught = sum(one_check(f"t-{n}") for n in range(tasks))
    within = 0
    for d in range(devices):
        passes = 0
        for n in range(TARGET_TASKS):
            if not cfg.should_check(passes, chunks, rng.random()):
                continue
            if one_check(f"d{d}-t{n}"):
                within += 1
                break
            passes += 1
    analytic = analytic_within(f, cfg, TARGET_TASKS, chunks)
    return {
        "f": f,
        "chunks": chunks,
        "per_check_measured": caught / tasks,
        "per_check_analytic": reputation.catch_per_check(f, cfg.k, chunks),
        "checks": tasks,
        "within_20_measured": within / devices,
        "within_20_analytic": analytic,
        "within_20_sigma": math.sqrt(analytic * (1 - analytic) / devices),
        "within_20_old_rule": analytic_within(f, cfg, TARGET_TASKS, chunks, old_rule=True),
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
        reexec: dict[tuple[str, int], int] = {}
        for device_id, chunks, n in conn.execute(
            "SELECT s.device_id, t.chunks, coalesce(sum(s.reexecuted_chunks), 0) "
            "FROM spot_checks s JOIN tasks t ON t.task_id = s.task_id "
            "GROUP BY s.device_id, t.chunks"
        ):
            reexec[device_id, chunks] = n
        proved: list[tuple[str, int, dict[str, Any]]] = [
            (device_id, chunks, json.loads(pot)["execution_metadata"])
            for device_id, chunks, pot in conn.execute(
                "SELECT p.device_id, t.chunks, p.pot FROM proofs p "
                "JOIN tasks t ON t.task_id = p.task_id WHERE p.pot != ''"
            )
        ]
        checks = dict(conn.execute("SELECT state, count(*) FROM spot_checks GROUP BY state"))
    finally:
        conn.close()
    honest = {d for d, f in agents.items() if f == 0}
    return {
        "devices": per_device,
        # What verifying honest devices costs (the fleet the target is about), and what
        # the whole fleet cost, cheaters' checks until quarantine included.
        "sizes": _shares(reexec, proved, honest),
        "sizes_all_devices": _shares(reexec, proved, set(agents)),
        "spot_checks": checks,
    }


def _shares(
    reexec: dict[tuple[str, int], int],
    proved: list[tuple[str, int, dict[str, Any]]],
    devices: set[str],
) -> dict[int, dict[str, Any]]:
    """Per task size: chunks re-executed priced at the devices' CPU per chunk of that size,
    over the CPU the devices reported for their tasks of that size."""
    sizes: dict[int, dict[str, Any]] = {}
    for device_id, chunks, meta in proved:
        if device_id in devices:
            s = sizes.setdefault(
                chunks, {"tasks_proved": 0, "device_cpu_ms_reported": 0, "chunks_proved": 0}
            )
            s["tasks_proved"] += 1
            s["device_cpu_ms_reported"] += meta["cpu_time_ms"]
            s["chunks_proved"] += meta["chunks"]
    for chunks, s in sizes.items():
        s["chunks_reexecuted"] = sum(
            n for (d, c), n in reexec.items() if c == chunks and d in devices
        )
        per_chunk_ms = s["device_cpu_ms_reported"] / max(1, s["chunks_proved"])
        s["reexecution_share"] = (s["chunks_reexecuted"] * per_chunk_ms) / max(
            1e-9, s["device_cpu_ms_reported"]
        )
    return sizes


def _submit(coord: procs.Coordinator, chunks: int) -> None:
    coord.call(
        "POST",
        "/v1/tasks",
        {
            "kind": "sha256-chain",
            "chunks": chunks,
            "params": {
                "seed": os.urandom(32).hex(),
                "iterations": max(1, ITERATIONS_32 * 32 // chunks),
            },
        },
        "client",
    )


def live(
    cheaters_per_f: int,
    honest: int,
    timeout_s: float,
    fs: tuple[float, ...] = FRACTIONS,
    sizes: tuple[int, ...] = CHUNK_SIZES,
) -> dict[str, Any]:
    settings = {
        "scheduler": {"tick_s": 0.2},
        "blocks": {"interval_s": 1.0},
        "spot_checks": {"retry_s": 1.0},
    }
    fleet = [0.0] * honest + [f for f in fs for _ in range(cheaters_per_f)]
    submitted = 0
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
                    _submit(coord, sizes[submitted % len(sizes)])
                    submitted += 1
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
    out["coordinator_cpu_s"] = cpu[0] if cpu else 0.0
    out["agents_cpu_s"] = sum(cpu[1:])
    out["coordinator_cpu_share_all_work"] = out["coordinator_cpu_s"] / max(1e-9, sum(cpu[1:]))
    return out


def least_chunks_for_rule(cfg: SpotCheckConfig, limit: int = 10_000) -> int | None:
    """The smallest task size at which this rule's expected share over a new device's
    first tasks is within the CPU target."""
    for chunks in range(1, limit + 1):
        if cfg.new_device_rate(chunks) * min(cfg.k, chunks) / chunks <= TARGET_CPU_SHARE:
            return chunks
    return None


def _size_summary(
    chunks: int, cfg: SpotCheckConfig, sims: list[dict], run: dict[str, Any]
) -> dict[str, Any]:
    bound = floor_share(chunks, cfg.k)
    measured = run["sizes"].get(chunks, {})
    ten = next((s for s in sims if s["chunks"] == chunks and s["f"] == TARGET_FRACTION), None)
    share = measured.get("reexecution_share") if measured.get("tasks_proved") else None
    # The rule is designed to sit on the target, so a finite sample lands on either side
    # of it: the catch target is met when the exact value meets it and the measurement
    # agrees with that value within 3 standard errors.
    catch_met = (
        None
        if ten is None
        else ten["within_20_analytic"] >= TARGET_CATCH_20 - 1e-12
        and abs(ten["within_20_measured"] - ten["within_20_analytic"])
        <= 3 * ten["within_20_sigma"] + 1e-12
    )
    return {
        "chunks": chunks,
        "new_device_rate": cfg.new_device_rate(chunks),
        "floor": bound,
        "targets_compatible": bound["share"] <= TARGET_CPU_SHARE,
        "expected_share_first_20": lifetime_share(TARGET_TASKS, cfg, chunks),
        "old_rule_share_first_20": lifetime_share(TARGET_TASKS, cfg, chunks, old_rule=True),
        "lifetime_reexecution_share": {
            str(n): lifetime_share(n, cfg, chunks) for n in (20, 100, 1000)
        },
        "old_rule_lifetime_share_1000": lifetime_share(1000, cfg, chunks, old_rule=True),
        "live_tasks_proved": measured.get("tasks_proved", 0),
        "live_chunks_reexecuted": measured.get("chunks_reexecuted", 0),
        "live_chunks_proved": measured.get("chunks_proved", 0),
        "live_reexecution_share": share,
        "live_reexecution_share_all_devices": run["sizes_all_devices"]
        .get(chunks, {})
        .get("reexecution_share"),
        "cpu_target_met": None if share is None else share <= TARGET_CPU_SHARE,
        "catch_target_met": catch_met,
    }


def measure(
    tasks: int = 20_000,
    devices: int = 4000,
    *,
    cheaters_per_f: int = 2,
    honest: int = 2,
    timeout_s: float = 150.0,
    fs: tuple[float, ...] = FRACTIONS,
    sizes: tuple[int, ...] = CHUNK_SIZES,
) -> dict[str, Any]:
    cfg = SpotCheckConfig()
    rng = random.Random()
    sims = [simulate(f, cfg, c, tasks=tasks, devices=devices, rng=rng) for c in sizes for f in fs]
    run = live(cheaters_per_f, honest, timeout_s, fs, sizes)
    per_size = [_size_summary(c, cfg, sims, run) for c in sizes]
    judged = per_size[-1]
    return {
        "k": cfg.k,
        "trust_after": cfg.trust_after,
        "floor": cfg.floor,
        "catch_fraction": cfg.catch_fraction,
        "catch_within_tasks": cfg.catch_within_tasks,
        "catch_probability": cfg.catch_probability,
        "chunks_per_task": list(sizes),
        "judged_chunks": judged["chunks"],
        "least_chunks_for_rule": least_chunks_for_rule(cfg),
        "sizes": per_size,
        "selection": sims,
        "live": run,
        "target_cpu_share": TARGET_CPU_SHARE,
        "target_catch_20": TARGET_CATCH_20,
        "cpu_target_met": judged["cpu_target_met"],
        "catch_target_met": judged["catch_target_met"],
    }


if __name__ == "__main__":
    json.dump(measure(2000, 500, cheaters_per_f=1, honest=1, timeout_s=60.0), sys.stdout, indent=2)
