"""Benchmark 2, fleet scale: N simulated devices, each with its own Ed25519 key, enrolled
through the API with a real token and a CSR, each holding its own keep-alive TLS 1.3
connection with its own CA-issued client certificate (so its own SSL context) and sending
a signed heartbeat every 5 s (random phase). For 1,000 / 5,000 / 10,000 devices: the
heartbeats accepted per second (against the rate offered, the reference), p50/p99 latency,
errors, and the coordinator's CPU and RSS over the measured window.

The devices run in a load-generator process of their own; all traffic is on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from . import procs, spy, stats

TARGET_DEVICES = 10_000
TARGET_P99_MS = 100.0
ALERT_P99_MS = 500.0
INTERVAL_S = 5.0
SETTINGS = {"protocol": {"stale_after_s": 3600, "heartbeat_interval_s": 5}}


def _windows(result: dict[str, Any], width: float) -> list[dict[str, float]]:
    """Split the measured window into consecutive ``width``-second runs."""
    out = []
    n = int(result["window_s"] // width)
    pairs = list(zip(result["seconds_into_window"], result["latencies_ms"], strict=True))
    for w in range(n):
        lat = [ms for t, ms in pairs if w * width <= t < (w + 1) * width]
        out.append({"per_s": len(lat) / width, "p99_ms": stats.percentile(lat, 99)})
    return out


def _handler_buckets(coord: procs.Coordinator) -> dict[float, float]:
    """The coordinator's own histogram of heartbeat handling times (every worker's, summed
    by ``/metrics``): upper bound in seconds -> requests at most that long, so far."""
    with urllib.request.urlopen(
        coord.url + "/metrics", timeout=60, context=coord.ssl_context()
    ) as r:
        text = r.read().decode()
    return {
        float(sample.labels["le"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "aeamc_coordinator_http_request_duration_seconds"
        for sample in family.samples
        if sample.name.endswith("_bucket") and sample.labels.get("route") == "/v1/heartbeats"
    }


def _bucket_quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound (ms) of the histogram bucket holding quantile ``q`` of the requests
    handled between two scrapes (inf: past the last bound)."""
    deltas = sorted((le, after.get(le, 0.0) - before.get(le, 0.0)) for le in after)
    total = deltas[-1][1] if deltas else 0.0
    for le, n in deltas:
        if total and n >= q * total:
            return le * 1000
    return float("inf")


def _one_size(
    coord: procs.Coordinator,
    token: str,
    devices: int,
    duration: float,
    interval_s: float,
    *,
    profile_dir: Path | None = None,
) -> dict:
    log = coord.root / f"fleet-{devices}.log"
    gen = procs.spawn_loadgen(
        [
            "fleet",
            "--url",
            coord.url,
            f"--ca={coord.ca_file}",
            f"--tls-dir={coord.root / 'fleet-devices'}",
            f"--enroll-token={token}",
            "--devices",
            str(devices),
            "--interval",
            str(interval_s),
            "--duration",
            str(duration),
        ],
        log,
    )
    pid = coord.process.pid if coord.process else 0
    try:
        procs.read_json_line(gen, "the fleet to reach its pace")
        sampler = None
        if profile_dir is not None:
            sampler = spy.record(pid, duration, profile_dir / f"fleet-{devices}.txt")
        buckets0 = _handler_buckets(coord)
        cpu0, t0 = procs.cpu_seconds(pid), time.monotonic()
        by_process = procs.cpu_by_process(pid)
        gen0 = procs.cpu_seconds(gen.pid)
        rss, gen_rss = [], []
        while time.monotonic() - t0 < duration:
            rss.append(procs.rss_bytes(pid, children=True))  # the supervisor and its workers
            gen_rss.append(procs.rss_bytes(gen.pid))
            time.sleep(1.0)
        cpu = (procs.cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        cpu_by_process = procs.cores_since(by_process, t0, pid)
        gen_cpu = (procs.cpu_seconds(gen.pid) - gen0) / (time.monotonic() - t0)
        load = os.getloadavg()[0]
        buckets = _handler_buckets(coord)
        if sampler is not None:
            sampler.wait(timeout=duration + 30)
        result = procs.read_json_line(gen, "the fleet's results")
    finally:
        gen.kill()
        gen.wait()
    lat = result["latencies_ms"]
    windows = _windows(result, interval_s)
    offered = devices / interval_s
    accepted_per_s = result["accepted"] / result["window_s"]
    return {
        "devices": devices,
        "offered_per_s": offered,
        "accepted_per_s": accepted_per_s,
        # Every heartbeat answered, shed ones included: the divisor of a profile's cost.
        "answered_per_s": (result["accepted"] + result.get("shed", 0)) / result["window_s"],
        "ratio_to_offered": accepted_per_s / offered,
        "per_window_per_s": stats.summary([w["per_s"] for w in windows]),
        "p50_ms": stats.percentile(lat, 50),
        "p99_ms": stats.percentile(lat, 99),
        "per_window_p99_ms": stats.summary([w["p99_ms"] for w in windows]),
        # The same requests as the coordinator's handlers timed them (from the head read to
        # the answer): what the devices wait beyond this waits in sockets, before a worker
        # reads the request, or in the load generator itself.
        "handler_p50_ms_at_most": _bucket_quantile(buckets0, buckets, 0.5),
        "handler_p99_ms_at_most": _bucket_quantile(buckets0, buckets, 0.99),
        "errors": result["errors"],
        "shed": result.get("shed", 0),
        "enroll_seconds": result["enroll_seconds"],
        "connect_seconds": result["connect_seconds"],
        "enroll_errors": result["enroll_errors"],
        "coordinator_cpu_cores": cpu,
        "coordinator_cpu_cores_by_process": cpu_by_process,
        "loadgen_cpu_cores": gen_cpu,
        "load_average_1m": load,
        "coordinator_rss_mb": max(rss) / 2**20 if rss else 0.0,
        "loadgen_rss_mb": max(gen_rss) / 2**20 if gen_rss else 0.0,
        "enroll_error_samples": result["enroll_error_samples"],
    }


def measure(
    sizes: tuple[int, ...] = (1000, 5000, 10_000),
    duration: float = 20.0,
    interval_s: float = INTERVAL_S,
    profile_dir: Path | None = None,
    workers: int = 1,
) -> dict:
    """The fleet sizes against their offered rates; ``workers``: the coordinator's worker
    processes (``[server] workers``)."""
    procs.raise_fd_limit()
    settings = procs.merge(SETTINGS, {"server": {"workers": workers}})
    with (
        procs.workspace("fleet") as root,
        procs.Coordinator(root, settings) as coord,
    ):
        token = coord.enroll_token(max(sizes))
        results = [
            _one_size(coord, token, n, duration, interval_s, profile_dir=profile_dir) for n in sizes
        ]
    held = [
        r["devices"]
        for r in results
        if r["p99_ms"] < ALERT_P99_MS
        and r["errors"] == 0
        and r["enroll_errors"] == 0
        and r["shed"] == 0
    ]
    top = next((r for r in results if r["devices"] == TARGET_DEVICES), None)
    return {
        "workers": workers,
        "interval_s": interval_s,
        "window_s": duration,
        "sizes": results,
        "largest_held_p99_under_500ms": max(held) if held else 0,
        "target": f"{TARGET_DEVICES} devices, p99 < {TARGET_P99_MS:.0f} ms, zero errors",
        "target_met": None
        if top is None
        else top["p99_ms"] < TARGET_P99_MS
        and top["errors"] + top["enroll_errors"] + top["shed"] == 0,
    }


if __name__ == "__main__":
    args = sys.argv[1:]
    where = None
    workers = 1
    if args[:1] == ["--workers"]:
        workers, args = int(args[1]), args[2:]
    if args[:1] == ["--profile"]:
        where = Path(args[1])
        where.mkdir(parents=True, exist_ok=True)
        args = args[2:]
    sizes = tuple(int(a) for a in args) or (1000,)
    window = 20.0 if where else 10.0  # a profile wants more samples
    out = measure(sizes, window, profile_dir=where, workers=workers)
    json.dump(out, sys.stdout, indent=2)
    if where is not None:
        for n, size in zip(sizes, out["sizes"], strict=True):
            raw = where / f"fleet-{n}.txt"
            print(f"\n{n} devices:", spy.render(spy.summarize(raw, window)))
            answered = round(size["answered_per_s"] * window)
            table = spy.render_stages(spy.stages(raw, answered))
            print(f"\nper heartbeat ({answered} answered):\n{table}")
