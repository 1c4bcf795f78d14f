"""Benchmark 1, proof ingestion: PoTs accepted per second end to end (transport, parsing,
signature, checkpoint and output checks, durable commit, the answer), one proof per
request and in batches as the agent's outbox sends them, against the raw PyNaCl Ed25519
verification rate of all cores measured in the same run, between the same rounds.

The proofs are real: devices enrolled through the API (each with its own CA-issued client
certificate), real assignments pushed by the coordinator's scheduler over mutual TLS,
outputs computed, PoTs signed just before each round. Each device sends only its own
proofs over its own TLS connection, as an agent does: ``concurrency`` connections in all,
spread over the devices. Blocks are not formed during a round (benchmark 3 measures
that), so a round times ingestion alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from typing import Any

from . import procs, spy, stats

TARGET_RATIO = 0.5
SETTINGS = {
    "scheduler": {"tick_s": 0.2, "max_inflight_per_device": 100_000},
    "blocks": {"interval_s": 3600.0, "max_receipts": 65_535},
}


def proof_devices(
    nodes: list[procs.Coordinator], devices: int, tasks: int, log: procs.Path
) -> subprocess.Popen[bytes]:
    """The load generator in ``proofs`` mode, returned once all ``tasks`` (submitted to the
    first node) are assigned to its ``devices`` (device i enrolled at node i mod n), ready
    for timed rounds; raises, the generator stopped, if some never are."""
    first = nodes[0]
    gen = procs.spawn_loadgen(
        [
            "proofs",
            "--url",
            ",".join(n.url for n in nodes),
            f"--ca={first.ca_file}",
            f"--enroll-token={first.enroll_token(devices)}",
            f"--client-token={first.token('client')}",
            "--devices",
            str(devices),
            "--tasks",
            str(tasks),
        ],
        log,
    )
    try:
        ready = procs.read_json_line(gen, "assignments")["ready"]
        if ready < tasks:
            raise RuntimeError(f"only {ready} of {tasks} assignments arrived; see {log}")
    except BaseException:
        gen.kill()
        gen.wait()
        raise
    return gen


def reference_rate(seconds: float) -> float:
    """Raw Ed25519 verifications/s of all cores: one verifying process per core, at once."""
    cores = os.cpu_count() or 1
    ps = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", "verify", "--seconds", str(seconds)],
            stdout=subprocess.PIPE,
            cwd=procs.Path(__file__).resolve().parents[1],
        )
        for _ in range(cores)
    ]
    total = 0.0
    for p in ps:
        out, _ = p.communicate(timeout=seconds + 60)
        got = json.loads(out)
        total += got["verifies"] / got["seconds"]
    return total


def measure_both(**kw: Any) -> dict[str, Any]:
    """``measure`` with the coordinator's default worker processes (one per core), and
    again with one process (``one_process``): what the workers add, in the same run."""
    out = measure(workers=os.cpu_count() or 1, **kw)
    out["one_process"] = measure(workers=1, **kw)
    return out


def measure(
    *,
    runs: int = 3,
    per_run: int = 1000,
    batch: int = 100,
    concurrency: int = 8,
    reference_s: float = 2.0,
    devices: int | None = None,
    profile: procs.Path | None = None,
    workers: int = 1,
    spy_dir: procs.Path | None = None,
) -> dict[str, Any]:
    """Ingestion rates against the reference; ``workers``: the coordinator's worker
    processes (``[server] workers``); ``spy_dir``: sample every batched round with py-spy
    there and report the microseconds per batched proof by stage (``spy.stages``)."""
    with procs.workspace("ingest") as root:
        return _measure(
            root,
            runs=runs,
            per_run=per_run,
            batch=batch,
            concurrency=concurrency,
            reference_s=reference_s,
            devices=devices or concurrency,
            profile=profile,
            workers=workers,
            spy_dir=spy_dir,
        )


def _measure(
    root: procs.Path,
    *,
    runs: int,
    per_run: int,
    batch: int,
    concurrency: int,
    reference_s: float,
    devices: int,
    profile: procs.Path | None,
    workers: int,
    spy_dir: procs.Path | None,
) -> dict[str, Any]:
    tasks = runs * per_run * 2
    settings = procs.merge(SETTINGS, {"server": {"workers": workers}})
    coord = procs.Coordinator(root, settings, profile=profile).start()
    log = root / "loadgen.log"
    gen = None
    try:
        gen = proof_devices([coord], devices, tasks, log)
        refs, single, batched, errors = [], [], [], []
        pid = coord.process.pid if coord.process else 0
        cpu: dict[str, list[float]] = {}
        samples = []
        for i in range(runs):
            refs.append(reference_rate(reference_s))
            one = procs.command(gen, f"single {per_run} {concurrency}", "single round")
            before, t0 = procs.cpu_by_process(pid), time.monotonic()
            sampled = contextlib.nullcontext()
            if spy_dir is not None:
                samples.append(spy_dir / f"batch-{i}.txt")
                sampled = spy.sampling(pid, samples[-1])
            with sampled:
                many = procs.command(gen, f"batch {per_run} {batch} {concurrency}", "batch round")
            for name, cores in procs.cores_since(before, t0, pid).items():
                cpu.setdefault(name, []).append(cores)
            for got, out in ((one, single), (many, batched)):
                out.append(got["accepted"] / got["seconds"])
                if got["accepted"] != got["proofs"]:
                    errors.append(got["errors"])
    finally:
        if gen is not None:
            gen.kill()
            gen.wait()
        coord.stop()
    batched_ratio = stats.ratio_summary(batched, refs)
    stage_us = spy.stages(samples, runs * per_run) if samples else None
    return {
        # µs per batched proof by stage (py-spy over the batched rounds), when sampled.
        "batched_stages_us": stage_us,
        "proofs_per_round": per_run,
        "batch_size": batch,
        "concurrency": concurrency,
        "devices": devices,
        "cores": os.cpu_count(),
        "workers": workers,
        "batched_cpu_cores_by_process": {k: stats.summary(v) for k, v in cpu.items()},
        "reference_verifies_per_s": stats.summary(refs),
        "single_per_s": stats.summary(single),
        "batched_per_s": stats.summary(batched),
        "single_ratio": stats.ratio_summary(single, refs),
        "batched_ratio": batched_ratio,
        "target_ratio": TARGET_RATIO,
        "target_met": batched_ratio["median"] >= TARGET_RATIO,
        "refused": errors,
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    workers = 1
    where = None
    if args[:1] == ["--workers"]:
        workers, args = int(args[1]), args[2:]
    if args[:1] == ["--spy"]:
        where = procs.Path(args[1])
        where.mkdir(parents=True, exist_ok=True)
        args = args[2:]
    prof = procs.Path(args[1]) if len(args) > 1 else None
    out = measure(
        runs=int(args[0]) if args else 2,
        # Not more per round: the load generator's devices send no heartbeats, so the
        # coordinator counts them gone after its staleness window, and every task of the
        # whole measurement is assigned first.
        per_run=2000,
        profile=prof,
        workers=workers,
        spy_dir=where,
    )
    json.dump(out, sys.stdout, indent=2)
    if out["batched_stages_us"]:
        print("\nper batched proof:\n" + spy.render_stages(out["batched_stages_us"]))
