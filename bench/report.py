# ruff: noqa: E501 - a markdown table row is one line, however long
"""The markdown of ``docs/performance.md``, rendered from one run's results.

Every number in the document comes from the result dictionary of the run it describes;
the prose around a figure only says what was measured, against what, and — for a
target that is missed — by how much and what limits it.
"""

from __future__ import annotations

import math
from typing import Any

from . import cluster, limits


def _f(x: Any, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, (int, float)) and abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _spread(s: dict[str, Any], digits: int = 1) -> str:
    return f"{_f(s['median'], digits)} ({_f(s['min'], digits)}–{_f(s['max'], digits)})"


def _verdict(met: bool | None, miss: str = "") -> str:
    if met is None:
        return "not measured at this size"
    return "**met**" if met else f"**missed**{(' — ' + miss) if miss else ''}"


def _met(met: Any) -> str:
    return "met" if met else "missed"


def _short(met: bool | None) -> str:
    return "not measured at this size" if met is None else "met" if met else "missed"


def render(r: dict[str, Any]) -> str:
    m = r["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    head = f"""# Performance

Measured by `make bench` on {r["date"]}{" (**--quick: tiny sizes, not a measurement**)" if r.get("quick") else ""}
on {m["cpu"]}, {m["cores"]} cores ({m["platform"]}), Python {m["python"]}, SQLite
{m["sqlite"]}; {versions}. Load average {", ".join(f"{x:.1f}" for x in m["load_average_at_start"])}
at the start and {", ".join(f"{x:.1f}" for x in m.get("load_average_at_end", []))} at the end:
this machine is shared, so absolute times move from run to run. That is why every figure
that has a reference is given as a ratio to that reference **measured in the same run**,
and repeated figures are given as median (min–max) over the runs.

Transport: {r["transport"]}. Each benchmark drives the system from a load-generator
process of its own (`python -m bench.loadgen …`); all traffic stays on 127.0.0.1. The whole
run took {_f(r["seconds"]["total"], 0)} s ({", ".join(f"{k} {_f(v, 0)} s" for k, v in r["seconds"].items() if k != "total")}).
Raw results: `bench/results/<date>.json`.

## Targets at a glance

| benchmark | figure | target | this run |
| --- | --- | --- | --- |
{_glance(r)}
"""
    parts = [head]
    for key, fn in (
        ("ingestion", _ingestion),
        ("fleet", _fleet),
        ("microblocks", _blocks),
        ("anchoring_gas", _anchoring),
        ("agent_footprint", _footprint),
        ("verification_economy", _economy),
        ("latency", _latency),
        ("wasm_sandbox", _wasm),
        ("cluster", lambda g: cluster.render(g, r)),
    ):
        if key in r:
            parts.append(fn(r[key]))
    parts.append(limits.OPTIMISATIONS)
    parts.append(limits.HOW_TO_PROFILE)
    return "\n\n".join(p.strip() for p in parts) + "\n"


def _glance(r: dict[str, Any]) -> str:
    rows = []
    if "ingestion" in r:
        g = r["ingestion"]
        rows.append(
            f"| 1 proof ingestion | batched PoTs/s ÷ raw Ed25519 verifications/s (all cores) "
            f"| ≥ {g['target_ratio']} | {_f(g['batched_ratio']['median'], 3)} "
            f"{_met(g['target_met'])} |"
        )
    if "fleet" in r:
        g = r["fleet"]
        top = g["sizes"][-1]
        rows.append(
            f"| 2 fleet | {top['devices']:,} devices: p99, errors | {g['target']} "
            f"| p99 {_f(top['p99_ms'])} ms, {top['errors']} errors, {top.get('shed', 0)} shed "
            f"{_short(g['target_met'])} |"
        )
    if "microblocks" in r:
        g = r["microblocks"]
        ten = next((s for s in g["sizes"] if s["receipts"] == 10_000 and s["fleet"] == "new"), None)
        val = f"{_f(ten['form_ms']['median'])} ms" if ten else "–"
        rows.append(
            f"| 3 microblocks | block of 10,000 receipts formed and persisted "
            f"| < {_f(g['target_ms_10k'], 0)} ms | {val} {_short(g['target_met'])} |"
        )
    if "anchoring_gas" in r:
        g = r["anchoring_gas"]
        rows.append(
            f"| 4 anchoring | gas per anchor tx ÷ bare anchor | ≤ {g['target_ratio']} "
            f"| {_f(g['ratio_to_bare']['MicroblockAnchor'], 3)} "
            f"{_met(g['target_met'])} |"
        )
    if "agent_footprint" in r:
        g = r["agent_footprint"]
        rows.append(
            f"| 5 agent idle | RSS ÷ deps-only process; CPU % of a core "
            f"| ≤ {g['target_rss_ratio']}; ≤ {g['target_cpu_pct']} % "
            f"| {_f(g['rss_ratio_to_deps'], 3)} {_met(g['rss_target_met'])}; "
            f"{_f(g['cpu_pct_of_one_core']['agent'], 3)} % "
            f"{_met(g['cpu_target_met'])} |"
        )
    if "verification_economy" in r:
        g = r["verification_economy"]
        judged = g["sizes"][-1]
        ten = next(
            (s for s in g["selection"] if s["f"] == 0.10 and s["chunks"] == judged["chunks"]),
            None,
        )
        catch = (
            f"{_f(ten['within_20_analytic'], 4)} exact, measured {_f(ten['within_20_measured'], 4)} ± {_f(ten['within_20_sigma'], 4)}"
            if ten
            else "–"
        )
        others = "; ".join(
            f"{s['chunks']} chunks: live {_f(s['live_reexecution_share'], 3)}"
            + (
                ""
                if s["targets_compatible"]
                else f", cannot be ≤ {g['target_cpu_share']}: no policy goes under {_f(s['floor']['share'], 4)}"
            )
            for s in g["sizes"][:-1]
        )
        rows.append(
            f"| 6 spot-checks | re-execution CPU ÷ device compute, new devices, {judged['chunks']}-chunk tasks; "
            f"P(catch f=10 % in 20 tasks) "
            f"| ≤ {g['target_cpu_share']}; ≥ {g['target_catch_20']} "
            f"| live {_f(judged['live_reexecution_share'], 3)} {_short(g['cpu_target_met'])}"
            f"{f' ({others})' if others else ''}; {catch} {_short(g['catch_target_met'])} |"
        )
    if "latency" in r:
        g = r["latency"]
        rows.append(
            f"| 7 latency | submit → PoT accepted minus compute, p50 "
            f"| ≤ {_f(g['target_p50_ms'], 0)} ms | {_f(g['overhead_p50_ms'])} ms "
            f"{_met(g['target_met'])} |"
        )
    if "wasm_sandbox" in r:
        g = r["wasm_sandbox"]
        ratios = "; ".join(f"{k['kernel']} {_f(k['ratio']['median'], 3)}" for k in g["kernels"])
        shares = "; ".join(
            f"{k['kernel']} {_f(k['reexecution']['share_new_device'] * 100, 2)} %"
            for k in g["kernels"]
        )
        nop = g["overhead"][0]
        rows.append(
            f"| 8 WebAssembly sandbox | sandboxed ÷ native (gcc -O2) throughput; fixed cost "
            f"per chunk, p50; coordinator re-execution ÷ device compute, new devices "
            f"| ≥ {g['target_ratio']}; ≤ {_f(g['target_overhead_p50_ms'], 0)} ms; "
            f"≤ {_f(g['target_reexecution_share'] * 100, 0)} % "
            f"| {ratios} {_met(g['ratio_target_met'])}; {_f(nop['p50_ms'], 2)} ms "
            f"{_met(g['overhead_target_met'])}; {shares} {_short(g['reexecution_target_met'])} |"
        )
    return "\n".join(rows)


def _ingestion(g: dict[str, Any]) -> str:
    ratio = g["batched_ratio"]["median"]
    miss = (
        f"{ratio:.3f} of the {g['target_ratio']} asked, {g['target_ratio'] / ratio:.1f}× short"
        if ratio
        else ""
    )
    return f"""## 1. Proof ingestion

Real devices (enrolled through the API with a CSR), real assignments pushed by the
scheduler over mutual TLS, outputs computed, PoTs signed just before each round;
{g["proofs_per_round"]} proofs per round, each round timed from the first request to the last
answer. {g.get("devices", "The")} devices each send only their own proofs, over their own
keep-alive TLS 1.3 connections with their own client certificate ({g["concurrency"]}
connections in all, their handshakes made before the timing starts). Between rounds, the raw PyNaCl Ed25519 verification rate of
{g["cores"]} processes at once (one per core) is measured: the reference.

| | per second, median (min–max) | ratio to raw Ed25519 (all cores) |
| --- | ---: | ---: |
| raw Ed25519 verifications, all cores (reference) | {_spread(g["reference_verifies_per_s"], 0)} | 1 |
| PoTs accepted, one per request (`POST /v1/proofs`) | {_spread(g["single_per_s"], 0)} | {_spread(g["single_ratio"], 3)} |
| PoTs accepted, batches of {g["batch_size"]} (`POST /v1/proofs/batch`, the agent's outbox) | {_spread(g["batched_per_s"], 0)} | {_spread(g["batched_ratio"], 3)} |
{_one_process_rows(g)}
{g.get("workers", 1)} worker processes (the default: one per core); while batches were sent
they used {_cpu_by_process(g.get("batched_cpu_cores_by_process", {}))} cores.

Every proof of every round was accepted{"" if not g["refused"] else " except: " + str(g["refused"])[:300]}.
Target: batched ≥ {g["target_ratio"]} × the raw rate — {_verdict(g["target_met"], miss)}.
{"" if g["target_met"] else limits.INGESTION}"""


def _one_process_rows(g: dict[str, Any]) -> str:
    one = g.get("one_process")
    if not one:
        return ""
    return (
        f"| the same, one process (`server.workers = 1`): one per request "
        f"| {_spread(one['single_per_s'], 0)} | {_spread(one['single_ratio'], 3)} |\n"
        f"| the same, one process: batches of {one['batch_size']} "
        f"| {_spread(one['batched_per_s'], 0)} | {_spread(one['batched_ratio'], 3)} |"
    )


def _cpu_by_process(cpu: dict[str, Any]) -> str:
    """``worker-1 0.71, worker-2 0.58`` (medians; the supervisor left out when idle)."""
    parts = []
    for name, v in cpu.items():
        value = v["median"] if isinstance(v, dict) else v
        if name == "main" and value < 0.01 and len(cpu) > 1:
            continue
        parts.append(f"{name} {_f(value, 2)}")
    return ", ".join(parts) or "–"


def _fleet_figures(g: dict[str, Any]) -> dict[str, str]:
    """The figures the fleet analysis quotes, from this run."""
    sizes = g["sizes"]
    per_hb = [
        s["coordinator_cpu_cores"] / s["accepted_per_s"] * 1000
        for s in sizes
        if s["accepted_per_s"]
    ]
    top = sizes[-1]
    lo, hi = (min(per_hb), max(per_hb)) if per_hb else (math.nan, math.nan)
    offered = top["offered_per_s"]
    return {
        "ms_lo": _f(lo, 2),
        "ms_hi": _f(hi, 2),
        "devices": f"{top['devices']:,}",
        "offered": _f(offered, 0),
        "cores_lo": _f(offered * lo / 1000, 1),
        "cores_hi": _f(offered * hi / 1000, 1),
        "cpu": _f(top["coordinator_cpu_cores"], 2),
        "accepted": _f(top["accepted_per_s"], 0),
        "rss": _f(top["coordinator_rss_mb"], 0),
        "rss_per_device": _f(
            (top["coordinator_rss_mb"] - sizes[0]["coordinator_rss_mb"])
            / max(1, top["devices"] - sizes[0]["devices"])
            * 1024,
            0,
        ),
        "loadgen_rss": _f(top.get("loadgen_rss_mb"), 0),
    }


def _fleet(g: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {s['devices']:,} | {_f(s['offered_per_s'], 0)} | {_f(s['accepted_per_s'], 0)} "
        f"(windows {_f(s['per_window_per_s']['min'], 0)}–{_f(s['per_window_per_s']['max'], 0)}) | {_f(s['ratio_to_offered'], 3)} "
        f"| {_f(s['p50_ms'])} | {_f(s['p99_ms'])} ({_f(s['per_window_p99_ms']['min'])}–"
        f"{_f(s['per_window_p99_ms']['max'])}) "
        f"| {_f(s.get('handler_p50_ms_at_most'))} / {_f(s.get('handler_p99_ms_at_most'))} "
        f"| {s['errors'] + s['enroll_errors']} ({s.get('shed', 0)}) "
        f"| {_f(s['coordinator_cpu_cores'], 2)} ({_cpu_by_process(s.get('coordinator_cpu_cores_by_process', {}))}) "
        f"| {_f(s['coordinator_cpu_cores'] / s['accepted_per_s'] * 1000 if s['accepted_per_s'] else None, 2)} "
        f"| {_f(s['coordinator_rss_mb'], 0)} "
        f"| {_f(s.get('loadgen_cpu_cores'), 2)} | {_f(s.get('loadgen_rss_mb'), 0)} | {_f(s.get('load_average_1m'))} "
        f"| {_f(s['enroll_seconds'])} | {_f(s.get('connect_seconds'))} |"
        for s in g["sizes"]
    )
    return f"""## 2. Fleet scale

Each simulated device has its own Ed25519 key, enrolled through the API with a real
enrollment token and a CSR, holds its own keep-alive TLS 1.3 connection with its own
CA-issued client certificate (so its own SSL context) and sends a signed heartbeat every
{_f(g["interval_s"], 0)} s at a random phase; after one interval (every device has sent once),
{_f(g["window_s"], 0)} s are measured. The reference is the rate offered (devices ÷ interval);
the spread is over consecutive {_f(g["interval_s"], 0)}-s windows. The coordinator's own
times (its request histogram, every worker's, from the head read to the answer; given as
the upper bound of the histogram's bucket) show how much of the devices' wait is in its
handlers; the rest is in sockets before a worker reads the request, or in the load
generator. Latencies are of
accepted heartbeats; a heartbeat shed (503 or 429, then retried after `Retry-After`) is
counted apart and means the fleet was not held. "enrollment" is every device
enrolling (its CSR signed by the coordinator's CA) and building its SSL context;
"connecting" is every device then opening its mutually authenticated connection and
sending its first heartbeat on it (as an agent does: a connection that sends no request
within `server.header_timeout_s` of opening is closed).
The coordinator runs {g.get("workers", 1)} worker processes (the default: one per core).

| devices | offered /s | accepted /s (per window) | ÷ offered | p50 ms | p99 ms (per window) | in the coordinator's handlers: p50 / p99 ms, at most | errors (shed: 503/429) | coordinator CPU (cores; by process) | coordinator CPU ms per heartbeat | coordinator RSS MB | load generator CPU (cores) | load generator RSS MB | machine load (1 min) | enrollment s | connecting s |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{rows}

Largest fleet held with p99 < 500 ms (the runbook's alert line) and no error:
**{g["largest_held_p99_under_500ms"]:,} devices** of those measured.
Target: {g["target"]} — {_verdict(g["target_met"])}.
{"" if g["target_met"] else limits.FLEET.format(**_fleet_figures(g))}"""


def _blocks(g: dict[str, Any]) -> str:
    rows = "\n".join(
        f"| {s['fleet']} | {s['receipts']:,} | {_spread(s['form_ms'])} "
        f"| {_spread(s['reference_ms'], 2)} | {_spread(s['ratio_to_reference'])} "
        f"| {_f(s['block_bytes_per_receipt']['median'], 0)} "
        f"| {_f(s['db_bytes_per_receipt_total'], 0)} |"
        for s in g["sizes"]
    )
    return f"""## 3. Microblock formation

The coordinator's own `form_block` on a real SQLite file (WAL, `synchronous=FULL`): select
the unblocked receipts, build and hash the block, insert it with the range of proof
sequence numbers it holds, and schedule the receipts' spot-checks, in one durable
transaction. Tasks of {g["chunks_per_task"]} chunks. "new"
devices have no passed check yet (every receipt gets a spot-check: the heaviest case);
"trusted" ones have 100 passes (about one receipt in ten is checked). Reference, same run:
encoding and hashing the same receipts and writing them to a file with one fsync.

| devices | receipts | form + persist ms | reference ms | ratio | block bytes / receipt | DB bytes / receipt (all) |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
{rows}

"block bytes / receipt" is the growth of the database file caused by forming the block
(block row and spot-checks); "all" includes the stored proof itself (the
signed PoT and its output, and its entry in the narrow index block formation reads). Target: 10,000 receipts in < {_f(g["target_ms_10k"], 0)} ms —
{_verdict(g["target_met"])}.
{"" if g["target_met"] else limits.BLOCKS}"""


def _anchoring(g: dict[str, Any]) -> str:
    med, spread, ratio = g["gas_per_anchor_tx"], g["spread"], g["ratio_to_bare"]
    rows = "\n".join(
        f"| {n} | {med[n]:,.0f} | {spread[n][0]:,}–{spread[n][1]:,} | {ratio[n]:.3f} |"
        for n in ("BareAnchor", "MicroblockAnchor", "Seed")
    )
    ours = med["MicroblockAnchor"]
    per_receipt = ", ".join(f"{n:,} receipts: {ours / n:,.1f}" for n in (100, 1000, 10_000, 65_535))
    return f"""## 4. Anchoring cost (gas per anchor transaction, anvil, cancun, solc 0.8.37)

| contract | median gas | spread over {g["roots"]} roots | ratio to bare |
| --- | ---: | ---: | ---: |
{rows}

- BareAnchor: one storage slot and one event, no access control (the reference).
- MicroblockAnchor: the project's contract (submitters, pause, duplicate check).
- Seed: the original design, a four-slot struct per microblock.
- Target: MicroblockAnchor ≤ {g["target_ratio"]} × bare — {_verdict(g["target_met"])}.
  One anchor transaction covers any number of microblocks (it anchors the Merkle root
  of their hashes), so its gas does not grow with the blocks it covers, and the gas per
  anchored receipt is the transaction's gas over the receipts it covers — for one block of
  {per_receipt} gas per receipt.
"""


def _footprint(g: dict[str, Any]) -> str:
    rss, cpu = g["rss_mb"], g["cpu_pct_of_one_core"]
    return f"""## 5. Agent footprint

The real agent (`aeamc-agent run`, enrolled over TLS 1.3 with its certificate, mDNS off,
the psutil telemetry source), heartbeating every {_f(g["heartbeat_interval_s"], 0)} s, measured
for {_f(g["window_s"], 0)} s after start-up, at the same time as the two references. RSS sampled
every second, of the agent's process and its children ({g["agent_child_processes"]} while idle:
`run` is the update launcher, which starts and supervises the daemon; the chunk worker
starts on first use); CPU from process times. The dependencies-only process imports what
the agent declares: `{g.get("deps_imported", "–")}`. The target is judged on RSS summed over
the agent's processes, which counts the pages they share (the interpreter, common
libraries) once in each; PSS (shared pages divided among the processes mapping them) and
USS (pages of that process alone) are shown beside it.

| process | RSS MB median (min–max) | PSS MB | USS MB | CPU % of one core |
| --- | ---: | ---: | ---: | ---: |
| bare Python (`time.sleep`) | {_spread(rss["bare"])} | {_shared(g, "pss", "bare")} | {_shared(g, "uss", "bare")} | {_f(cpu["bare"], 3)} |
| imports the agent's dependencies only | {_spread(rss["deps"])} | {_shared(g, "pss", "deps")} | {_shared(g, "uss", "deps")} | {_f(cpu["deps"], 3)} |
| the agent (all its processes) | {_spread(rss["agent"])} | {_shared(g, "pss", "agent")} | {_shared(g, "uss", "agent")} | {_f(cpu["agent"], 3)} |
{_footprint_parts(g)}
- RSS ÷ dependencies-only process: {_f(g["rss_ratio_to_deps"], 3)} (÷ bare Python:
  {_f(g["rss_ratio_to_bare"], 2)}; the daemon alone ÷ dependencies-only:
  {_f(g.get("daemon_rss_ratio_to_deps"), 3)}). Target ≤ {g["target_rss_ratio"]} — {_verdict(g["rss_target_met"])}.
- CPU: {_f(cpu["agent"], 3)} % of one core. Target ≤ {g["target_cpu_pct"]} % — {_verdict(g["cpu_target_met"])}.
- On the wire per heartbeat (request and answer, headers included, counted by a relay on
  the socket): {_f(g["bytes_per_heartbeat"], 0)} bytes ({_f(g["bytes_up_per_heartbeat"], 0)} up,
  {_f(g["bytes_down_per_heartbeat"], 0)} down); heartbeats in the window: {g["heartbeats_in_window"]}.
  {_wire_note(g)}
{"" if g["rss_target_met"] or not _footprint_parts(g) else limits.FOOTPRINT.format(**_footprint_figures(g))}"""


def _footprint_parts(g: dict[str, Any]) -> str:
    parts = g.get("rss_mb_by_process")
    if not parts or not parts["launcher"]["median"]:
        return ""
    return (
        f"| — the launcher (`run`) | {_spread(parts['launcher'])} | | | |\n"
        f"| — the daemon it supervises | {_spread(parts['daemon'])} | | | |\n"
    )


def _shared(g: dict[str, Any], kind: str, process: str) -> str:
    """Median PSS or USS (extra columns; the target is judged on RSS, which counts shared
    pages in full in each process)."""
    return _f(g.get(f"{kind}_mb", {}).get(process, {}).get("median"))


def _footprint_figures(g: dict[str, Any]) -> dict[str, str]:
    parts = g.get("rss_mb_by_process") or {}
    launcher = parts.get("launcher", {}).get("median", 0.0)
    daemon = parts.get("daemon", {}).get("median", g["rss_mb"]["agent"]["median"])
    return {
        "launcher": _f(launcher, 0),
        "daemon": _f(daemon, 0),
        "daemon_ratio": _f(daemon / g["rss_mb"]["deps"]["median"], 2),
    }


def _wire_note(g: dict[str, Any]) -> str:
    """Whether the heartbeats in the window reused one TLS connection or each had its own."""
    conns, beats = g.get("connections_in_window"), g["heartbeats_in_window"]
    if conns is None or not beats:
        return "All of it over TLS 1.3 (each record carries 22 bytes of framing)."
    if conns >= beats:
        return (
            f"All of it over TLS 1.3, and the relay saw as many new connections as heartbeats ({conns}): "
            "each heartbeat opened a connection and paid its full handshake — both "
            "certificates — in the count. The agent keeps an idle connection open past its "
            "longest heartbeat gap, so something between it and the coordinator closed them."
        )
    return (
        f"All of it over TLS 1.3 on kept-alive connections ({conns} opened in the window), "
        "so the handshake is paid once per connection, not per heartbeat."
    )


def _economy(g: dict[str, Any]) -> str:
    sizes = "\n".join(
        f"| {s['chunks']} | {_f(s['new_device_rate'], 4)} | {_f(s['expected_share_first_20'], 4)} "
        f"| {_f(s['old_rule_share_first_20'], 4)} | {_f(s['floor']['share'], 4)} "
        f"| {_f(s['live_reexecution_share'], 3)} ({s['live_chunks_reexecuted']:,} of {s['live_chunks_proved']:,} chunks; all devices {_f(s['live_reexecution_share_all_devices'], 3)}) "
        f"| {_f(s['lifetime_reexecution_share']['1000'], 4)} ({_f(s['old_rule_lifetime_share_1000'], 4)}) "
        f"| {_short(s['cpu_target_met'])} | {_short(s['catch_target_met'])} |"
        for s in g["sizes"]
    )
    sel = "\n".join(
        f"| {s['chunks']} | {s['f']:.0%} | {_f(s['per_check_measured'], 4)} | {_f(s['per_check_analytic'], 4)} "
        f"| {s['checks']:,} | {_f(s['within_20_measured'], 4)} | {_f(s['within_20_analytic'], 4)} ± {_f(s['within_20_sigma'], 4)} "
        f"| {_f(s['within_20_old_rule'], 4)} | {s['devices']:,} |"
        for s in g["selection"]
    )
    live = g["live"]
    devs = "\n".join(
        f"| {d['f']:.0%} | {d['tasks_proved']} | {d['caught_at_task'] or '–'} | {d['state']} |"
        for d in sorted(live["devices"].values(), key=lambda d: d["f"])
    )
    judged = g["sizes"][-1]
    bound = limits.ECONOMY_BOUND.format(
        openings=_f(judged["floor"]["openings"], 1),
        least=judged["floor"]["least_chunks_for_target"],
        least_rule=g["least_chunks_for_rule"],
        k=g["k"],
        cannot="".join(
            limits.ECONOMY_CANNOT.format(
                chunks=s["chunks"],
                share=_f(s["floor"]["share"] * 100, 2),
                whole=_f(s["floor"]["share_whole_openings"] * 100, 2),
                rule=_f(s["expected_share_first_20"] * 100, 2),
                faked=s["floor"]["fixed_count"]["faked"],
                checks=s["floor"]["fixed_count"]["checks"],
                fixed=_f(s["floor"]["fixed_count"]["share"] * 100, 2),
                fixed_verdict="still above 5 %"
                if s["floor"]["fixed_count"]["share"] > g["target_cpu_share"]
                else "within 5 %",
            )
            for s in g["sizes"]
            if not s["targets_compatible"]
        ),
    )
    return f"""## 6. Verification economy

k = {g["k"]} chunks opened per challenge. The check rate of a new device comes from an
assurance target — a device faking f = {g["catch_fraction"] * 100:.0f} % of its chunks caught
within its first {g["catch_within_tasks"]} tasks with probability ≥ {g["catch_probability"]}:
each of its tasks is checked with the smallest p for which 1 − (1 − p·q)^{g["catch_within_tasks"]} ≥
{g["catch_probability"]}, q = 1 − (1 − f)^min(k, chunks), until it has
max(trust_after, {g["catch_within_tasks"]}) passes; then with probability {g["trust_after"]}/passes
(never above p), never below {g["floor"]}. Tasks of {" and ".join(str(c) for c in g["chunks_per_task"])} chunks;
the targets are judged at {g["judged_chunks"]}, where they can both hold.

**Cost** — the re-execution share of an honest new device's first 20 tasks expected under
this rule and under the rule it replaced (every task until {g["trust_after"]} passes, then
{g["trust_after"]}/passes), the least any sampling policy can have and still meet the catch
target, the live run's share for its honest devices (and for all of them, the cheaters'
checks until quarantine included), and the expected share over 1,000 tasks (old rule in
brackets). The CPU target is judged on the live share of the honest devices:

| chunks per task | p | first 20 tasks | old rule | least possible | live | 1,000 tasks | CPU ≤ {g["target_cpu_share"]} | catch ≥ {g["target_catch_20"]} |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- |
{sizes}

**Catching a cheater** — the coordinator's real challenge derivation on fresh block hashes
and its real check-rate rule, against the agent's cheat mode (each chunk faked with
probability f), over many tasks; analytic: 1 − (1 − f)^k per checked task, and for
"within 20 tasks" the exact value under the same rule (± one standard error of the
measurement), and under the old rule. The rule sits on the target by design, so the catch
target counts as met when the exact value meets it and the measurement agrees with it
within 3 standard errors.

| chunks | f faked | per check, measured | 1 − (1 − f)^k | checks | caught within 20 tasks, measured | analytic | old rule | devices |
| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{sel}

**Live**, real agent processes (the cheaters in the agent's labelled demo-only cheat mode),
tasks alternating between the sizes at the same compute per task:

| f faked | tasks proved | caught at its task # | state |
| ---: | ---: | ---: | --- |
{devs}

Spot-checks: {", ".join(f"{n} {k}" for k, n in sorted(live["spot_checks"].items()))}. The
re-execution share of each size is the chunks the coordinator re-executed on tasks of that
size, priced at the devices' own CPU per chunk of that size (the same function on the same
machine), over what the devices computed for them. All the coordinator's CPU in that time
(heartbeats, scheduling, blocks and checks; psutil) was {_f(live["coordinator_cpu_s"], 2)} s
against {_f(live["agents_cpu_s"], 2)} s for the agents (whole processes), a ratio of
{_f(live["coordinator_cpu_share_all_work"], 3)}.

Targets at {g["judged_chunks"]}-chunk tasks: verification CPU ≤ {g["target_cpu_share"]} of the
devices' compute — {_verdict(g["cpu_target_met"])}; a device faking ≥ 10 % caught within its
first 20 tasks with probability ≥ {g["target_catch_20"]} — {_verdict(g["catch_target_met"])}.

{bound}
{"" if g["cpu_target_met"] is not False else limits.ECONOMY.format(live=_f(judged["live_reexecution_share"], 3), chunks=judged["chunks"], expected=_f(judged["expected_share_first_20"], 3), old=_f(judged["old_rule_share_first_20"], 3))}"""


def _latency(g: dict[str, Any]) -> str:
    return f"""## 7. Latency

One real agent, one client submitting {g["tasks"]} tasks one at a time (each waits for its
proof, so nothing queues); times from the coordinator's own records (task created, proof
accepted), minus the chunk execution time the device signed in its PoT.

| | median (min–max) ms | p50 | p99 |
| --- | ---: | ---: | ---: |
| submit → PoT accepted, minus compute | {_spread(g["overhead_ms"])} | {_f(g["overhead_p50_ms"])} | {_f(g["overhead_p99_ms"])} |
| chunk compute (signed by the device) | {_spread(g["compute_ms"])} | | |
| one small API round trip (reference) | {_spread(g["reference_rtt_ms"], 2)} | | |

The overhead is {_f(g["ratio_p50_to_rtt"])} × one API round trip: it holds two HTTP exchanges
(the assignment pushed to the device, the proof sent back), the device's durable writes
(the accepted assignment, the trace, the proof in its outbox, each fsynced with its
directory) and the coordinator's durable commits (the assignment, then the proof). Target p50 ≤ {_f(g["target_p50_ms"], 0)} ms — {_verdict(g["target_met"])}.
{"" if g["target_met"] else limits.LATENCY}"""


def _per_s(x: float) -> str:
    """A rate, in millions per second from a million on."""
    return f"{x / 1e6:.1f} M" if x >= 1e6 else _f(x, 0)


def _wasm(g: dict[str, Any]) -> str:
    kernels = g["kernels"]
    rows = "\n".join(
        f"| {k['kernel']} | {k['task']}, {k['chunks']} chunks "
        f"| {_per_s(k['native_work_per_s']['median'])} {k['unit']}/s, {_f(k['native_chunks_per_s']['median'])} chunks/s "
        f"| {_per_s(k['sandbox_work_per_s']['median'])} {k['unit']}/s, {_f(k['sandbox_chunks_per_s']['median'])} chunks/s "
        f"| {_spread(k['ratio'], 3)} "
        f"| {k['fuel_per_chunk']['min']:,} / {k['fuel_per_chunk']['median']:,.0f} / {k['fuel_per_chunk']['max']:,} "
        f"| {_f(k['fuel_per_unit'])} | {'yes' if k['outputs_identical'] else '**no**'} |"
        for k in kernels
    )
    names = list(kernels[0]["variants"]) if kernels else []
    variants = "\n".join(
        f"| {name} | "
        + " | ".join(
            f"{_spread(k['variants'][name], 3)}"
            + (
                f", fuel {k['variant_fuel_task'][name] / k['fuel_per_chunk']['task']:.2f}×"
                if "simd" in name and k["variant_fuel_task"].get(name) is not None
                else ""
            )
            for k in kernels
        )
        + " |"
        for name in names
    )
    overhead = "\n".join(
        f"| {o['kernel']} | {_f(o['memory_kib'], 0)} | {o['runs']:,} | {_f(o['p50_ms'], 3)} "
        f"| {_f(o['p99_ms'], 3)} | {_f(o['max_ms'], 2)} | {o['fuel']:,} |"
        for o in g["overhead"]
    )
    reexec = "\n".join(
        f"| {k['kernel']} | {k['chunks']} | {_f(e['new_device_rate'], 4)} | {e['opened_per_check']} "
        f"| {_f(e['opened_per_task'], 2)} | {_spread(e['mean_chunk_ms'], 2)}; {_f(e['input_digest_ms'], 2)} "
        f"| {_f(e['device_task_ms'], 0)} | {_spread(e['reexec_to_device_chunk'], 3)} "
        f"| **{_f(e['share_new_device'] * 100, 2)} %** | {_f(e['share_at_floor'] * 100, 2)} % |"
        for k in kernels
        for e in (k["reexecution"],)
    )
    head = "| | " + " | ".join(f"{k['kernel']} ({k['task']})" for k in kernels) + " |"
    rule = "| --- |" + " ---: |" * len(kernels)
    nop = g["overhead"][0]
    why = "" if g["ratio_target_met"] is not False else "\n\n" + limits.WASM.strip()
    return f"""## 8. WebAssembly sandbox

The example kernels of `docs/workloads/` ({", ".join(k["kernel"] for k in kernels)}), each
built from the same C file twice by `tools/build_kernels.py`: to WebAssembly as a client
builds it ({g["compilers"]["clang"]}, `-O2`, freestanding) and natively
({g["compilers"]["gcc"]}, `-O2 -shared -fPIC`). Natively, the input is copied once into
the buffer `aeamc_input` returns and only the `aeamc_run` calls are timed (ctypes). In the
sandbox ({g["wasmtime"]}), every chunk is the production `run_chunk`: module compiled
once, a fresh instance per chunk with {g["memory_mb"]} MB of memory and {g["fuel"]:,} fuel,
input written, output read. Native and sandboxed alternate chunk by chunk; a run is one
pass over the task's chunks, and the ratio is taken per run.

| kernel | task | native (gcc -O2) | sandboxed | sandboxed ÷ native, median (min–max) | fuel per chunk min / median / max | fuel per {kernels[0]["unit"] if len(kernels) == 1 else "pixel or MAC"} | outputs identical |
| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |
{rows}

Fuel is deterministic: the same on every machine and every run, the cost both sides of a
task agree on. Target: sandboxed ≥ {g["target_ratio"]} × native for each kernel —
{_verdict(g["ratio_target_met"])}.

**Where the ratio goes.** The same chunks, alternating with the native ones, on engines that
each drop one of the sandbox's determinism settings (not deterministic: they run nothing in
production), and on the sandbox itself with the kernel built with WebAssembly SIMD
(`-msimd128`, which the sandbox accepts; fuel relative to the plain build):

{head}
{rule}
{variants}{why}

**Fixed cost per chunk**, the module cached: instantiate (the module's initial memory
included), write the input, call, read the output — `run_chunk` on a kernel that does
nothing (a few lines of WAT) and on the example kernels' smallest input:

| kernel | initial memory KiB | runs | p50 ms | p99 ms | max ms | fuel |
| --- | ---: | ---: | ---: | ---: | ---: | ---: |
{overhead}

Target: p50 ≤ {_f(g["target_overhead_p50_ms"], 0)} ms for the empty kernel — {_f(nop["p50_ms"], 3)} ms,
{_verdict(g["overhead_target_met"])}.

**Re-execution by the coordinator.** A challenge opens min(k, chunks) chunks chosen
uniformly from the block hash (k = {kernels[0]["reexecution"]["k"] if kernels else "–"}), and a new
device's task is challenged with the probability p its assurance target gives (section 6,
`SpotCheckConfig()` defaults). The coordinator re-executes an opened chunk through
`WasmKernel.run_chunk` (module cached; input fetched by digest, its SHA-256 checked, run
in the sandbox), timed for every chunk of the task in the same loop as the device's
sandboxed chunks. Verification CPU ÷ device compute for the task is

share = p · min(k, chunks) · t̄(re-execution of one chunk) ÷ T(device, whole task)
      = p · min(k, chunks) ÷ chunks · (t̄ re-execution ÷ t̄ device chunk).

A device's task is computed in the same sandbox, so the last factor is about 1, plus the
input's SHA-256, which `WasmKernel` checks on every re-execution (timed once for this
input in the same run); the share is set by how many chunks the economy opens per task. Once a device has a long record, its rate
decays to the floor ({_f(kernels[0]["reexecution"]["trusted_floor"] if kernels else None, 2)}): last column.

| kernel | chunks | p (new device) | opened per check | opened per task (p · min(k, chunks)) | re-execution ms per chunk; of it, the input's digest | device compute ms per task | re-execution ÷ device chunk | share, new device | share at the floor |
| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{reexec}

Target: ≤ {_f(g["target_reexecution_share"] * 100, 0)} % for tasks of 64 chunks or more
(section 6: below that, no sampling policy meets both the catch target and 5 %) —
{_verdict(g["reexecution_target_met"])}."""
