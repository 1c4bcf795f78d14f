"""``make bench``: run the benchmarks, write ``bench/results/<date>.json`` and the tables in
``docs/performance.md``. Every figure with a reference is a ratio measured in this run.

``--quick`` runs every benchmark at a tiny size (a check of the harness, not a
measurement; its JSON is ``<date>-quick.json``); ``--only NAME`` runs some of them. Only a
full run of all of them writes ``docs/performance.md``, unless ``--doc`` says where.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import (
    anchor_gas,
    blocks,
    cluster,
    economy,
    fleet,
    footprint,
    ingest,
    latency,
    machine,
    report,
    wasm,
)
from bench.transport import transport

ROOT = Path(__file__).resolve().parents[1]
#: The coordinator's default: one worker process per core.
CORES = os.cpu_count() or 1

#: Each benchmark at full size (``make bench``) and at a tiny one (``--quick``).
PLANS: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
    "anchoring_gas": (lambda: anchor_gas.measure(20), lambda: anchor_gas.measure(3)),
    "microblocks": (
        lambda: blocks.measure((100, 1000, 10_000, 65_535), 5),
        lambda: blocks.measure((100,), 1),
    ),
    "ingestion": (
        lambda: ingest.measure_both(runs=5, per_run=1000, batch=100, concurrency=10),
        lambda: ingest.measure_both(
            runs=1, per_run=10, batch=5, concurrency=2, reference_s=0.3, devices=2
        ),
    ),
    "fleet": (
        lambda: fleet.measure((1000, 5000, 10_000), 30.0, workers=CORES),
        lambda: fleet.measure((20,), 1.0, interval_s=0.5, workers=CORES),
    ),
    "agent_footprint": (
        lambda: footprint.measure(60.0, 30.0),
        lambda: footprint.measure(1.0, 0.5, settle_s=0.2),
    ),
    "verification_economy": (
        lambda: economy.measure(20_000, 10_000, cheaters_per_f=1, honest=4, timeout_s=240.0),
        lambda: economy.measure(200, 50, cheaters_per_f=0, honest=1, timeout_s=1.0, fs=(0.25,)),
    ),
    "latency": (lambda: latency.measure(60, 5), lambda: latency.measure(2, 1)),
    "wasm_sandbox": (
        lambda: wasm.measure(wasm.FULL, runs=3, overhead_runs=2000),
        lambda: wasm.measure(wasm.QUICK, runs=1, overhead_runs=50),
    ),
    # Two nodes over PostgreSQL: benchmark 1's rounds and benchmark 2's sizes, the devices
    # split over the nodes.
    "cluster": (
        lambda: cluster.measure(
            ingestion={
                "runs": 5,
                "per_run": 1000,
                "batch": 100,
                "concurrency": 10,
                "reference_s": 2.0,
                "devices": 10,
            },
            sizes=(1000, 5000, 10_000),
            duration=30.0,
        ),
        cluster.quick,
    ),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (harness check)")
    parser.add_argument("--only", action="append", choices=sorted(PLANS), help="run only these")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--doc", type=Path, default=None)
    args = parser.parse_args(argv)
    names = args.only or list(PLANS)
    # Only a full run of every benchmark describes the product; a quick or partial one
    # writes the document only where --doc says.
    full = not args.only and not args.quick
    doc = args.doc or (ROOT / "docs" / "performance.md" if full else None)
    started = time.monotonic()
    now = dt.datetime.now(dt.UTC)
    result: dict[str, Any] = {
        "date": now.isoformat(timespec="seconds"),
        "quick": args.quick,
        "transport": transport().name,
        "machine": machine.describe(),
        "seconds": {},
    }
    for name in names:
        t0 = time.monotonic()
        print(f"bench: {name} …", file=sys.stderr, flush=True)
        result[name] = PLANS[name][1 if args.quick else 0]()
        result["seconds"][name] = round(time.monotonic() - t0, 1)
        print(f"bench: {name} done in {result['seconds'][name]} s", file=sys.stderr, flush=True)
    result["seconds"]["total"] = round(time.monotonic() - started, 1)
    result["machine"]["load_average_at_end"] = list(machine.os.getloadavg())
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    (args.out / f"{now:%Y-%m-%d}{suffix}.json").write_text(json.dumps(result, indent=2) + "\n")
    text = report.render(result)
    if doc is not None:
        doc.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
