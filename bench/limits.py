# ruff: noqa: E501 - markdown table rows are one line each
"""What limits the figures that miss their targets, from profiles taken on this machine.

Kept apart from the renderer because this is analysis, not measurement: it was written
from cProfile runs of the coordinator under each benchmark's load and from timings of the
individual steps (the last section of docs/performance.md says how to take them), and
must be revisited when the code changes. The renderer shows a paragraph only when its
target was missed in the run being reported.
"""

INGESTION = """
**What limits it.** The cores, and the Python and SQLite work around each signature.
Per batched proof (py-spy over the batched rounds, one worker process:
`python -m bench.ingest --workers 1 --spy DIR 3`) the event loop spends about 260 µs —
TLS, sockets and aiohttp ~70, decoding and schema ~35, the front layer ~45, the handlers'
own logic the rest — and the other threads about 600 µs of samples: SQLite ~450 (the
batch's own statements, now set-based, ~240; the scheduler's read of the open tasks at
each tick ~130, as it re-counts the live assignments of every running task — 12,000 in
this benchmark; the assignment reads before the checks the rest), the Ed25519 checks
~160 and the output and trace checks. That is about 0.6 ms of CPU per proof against
~60 µs for the Ed25519 verification that is the reference's unit. The coordinator runs
one worker process per core (SPEC §16), each doing its own connections' TLS, parsing and
checks, so the work is no longer bound to one core — but this machine has two, and the
load generator needs a large share of them: the workers' CPU above is what was left. At
0.6 ms per proof two whole cores would give ~3,300 proofs/s, about 0.11–0.15 of the
reference; the target asks for five times less work per proof than that.

**What would close it.** Less work per proof, where the profile puts it: a scheduler
that reads only the tasks still short of devices (a live-assignment count kept on the
task row, or an index on it) instead of re-counting every running task at each tick; the
assignment rows read in one query per batch; the HTTP/TLS front in compiled code. Set-based
SQL for a batch (one statement per table instead of six per proof) is in place and did not
move the figure: the statements' time is SQLite's own (index and trigger work per row),
not the Python around them. The reference grows with cores and so do the workers; on a
machine where the load generator does not share the coordinator's cores the ratio rises
with them.
"""

FLEET = """
**What limits it.** One heartbeat costs the coordinator {ms_lo}–{ms_hi} ms of CPU in this run
(the table's "ms per heartbeat", summed over its worker processes). With one worker
process a heartbeat costs 1.1–1.5 ms of CPU (four runs of 3,000 devices, median 1.36 ms);
on the event loop, by py-spy's samples (medians of the four): aiohttp 154 µs, sockets
and asyncio 152, TLS 109, the handlers' logic 74, decoding, schema and canonical form
50, the front layer, metrics and logs 46, JSON 40, the Ed25519 hand-off 21; off the loop
the SQLite writer (one `UPDATE`, one `INSERT`, the change log's trigger row: 116 µs of
samples, and the group commit's fsync, which does not hold the GIL) and the Ed25519
check (115). With several workers each also follows the others' device changes: two
workers spent 1.58 ms of CPU per heartbeat where one spent 1.07 in the same minutes. {devices} devices offer {offered} heartbeats/s, which needs
~{cores_lo}–{cores_hi} cores; the coordinator's workers used {cpu} cores and accepted
{accepted} heartbeats/s, sharing the machine's two cores with the load generator, which
needs about 0.4 ms of CPU per heartbeat of its own (TLS, JSON, an Ed25519 signature each).

**Where the wait is.** Below saturation the handlers answer in a few ms (p50) and the
devices' p99 is a few hundred ms: now and then a request waits that long inside the
coordinator (a sampling profile does not show what holds it; candidates are work done in
one piece on the event loop — following thousands of device changes, the scheduler's pass
over the fleet, garbage collection of the per-device objects — and the workers' turns at
the write lock). Past saturation the coordinator sheds: once requests wait longer than
`server.max_queue_delay_ms` — the event loop runs that late, or even the quickest
heartbeat of the last 100 ms took that long — a growing share of heartbeats gets 503 with
`Retry-After` (the column in brackets) instead of a place in a queue, so the devices' p99
stays in seconds rather than tens of seconds and nothing times out. The share shed
overshoots: the coordinator then accepts fewer heartbeats than it could, because the
delay signals stay high while thousands of connections are read at all. With two
workers on two cores, each worker also follows the other's writes and they take turns at
the database's write lock; on this machine, with the load generator taking much of a
core, that costs a good part of what the second worker brings.

**Memory.** Each device costs the coordinator about {rss_per_device} KB — its TLS connection
and its state in memory (the growth of the RSS from the smallest to the largest fleet,
per device added): {rss} MB at {devices} devices. asyncio would give each TLS connection a 256 KiB read
buffer of its own; the product bounds it at 32 KiB (`aeamc.shared.runtime.tls`), which took
the coordinator at 10,000 devices from 3,148 MB to 945 MB. The load generator holds an SSL
context per device as well ({loadgen_rss} MB at {devices}).

**What would close it.** Cores the load generator does not take: the workers scale with
them (each heartbeat is independent of the others, and the store, not a worker, decides
replays). On this machine, about half the per-heartbeat CPU again: heartbeats stored as
the device's latest state with a sampled history instead of a row each (and no change-log
row for the heartbeat-only columns), and the TLS and HTTP handling in compiled code; and
for the p99, the loop's long pieces of work split into short ones (the follower and the
scheduler in slices, fewer long-lived objects per device), once a trace of the stalls
names which.
"""

BLOCKS = """
**What limits it.** Forming a block no longer writes to the proof rows: the block row
records the range of proof sequence numbers it holds (`first_seq`, `last_seq`), the
receipts are read from a narrow covering index (`proofs_receipts`: seq, task, device,
signature) instead of the ~1 KB rows with their signed PoT and output, and random
spot-checks are stored without indices (derived from the block hash when the challenge is
sent). On a quiet machine that forms 10,000 receipts from new devices in ~40 ms and from
trusted ones in ~30 ms; the same code takes up to twice as long while other benchmarks
share the two cores, which is when this target is missed. Timed statement by statement
(10,000 receipts, new devices, nine blocks): the select 7 ms, building the block
(encoding, duplicate check, SHA-256) 6–10 ms plus ~5 ms for its 10,000 `Receipt`
objects, the spot-check rows 10–11 ms (10,000 of them, one `INSERT … SELECT`, each row
going into the table and its `(state, next_attempt_at)` index), the commit's fsync of
the ~2.7 MB of new pages in the WAL 5 ms, and the Python around them and the hop to the writer thread the
rest. For trusted devices the checks are ~1,000 rows (2 ms) and the commit 3.5 ms. A
cProfile of the writer thread shows the same split, the Python steps inflated by the
profiler (the payload encoding 27 ms under it, ~6 ms without).

**What would close it with margin.** Fewer rows per block for new devices: one row per
block recording which of its receipts are checked (a bitmap over its range), a check's
own row made only when its challenge is first sent; and the per-receipt Python of
`build_block` (object, encoding, duplicate check) in compiled code, or encoding straight
from the selected rows.
"""

ECONOMY_BOUND = """
**What no sampling policy can beat.** A device that fakes each chunk with probability f
escapes n opened chunks with probability (1 − f)^n, and (1 − f)^X is convex in the number
X of chunks opened, so whatever decides which tasks and chunks are opened — randomised or
not, spread or bunched — P(escape) ≥ (1 − f)^E[X]. Catching f = 10 % within 20 tasks with
probability 0.99 therefore needs E[X] ≥ ln(0.01) / ln(0.9) = {openings} chunks opened over
those 20 tasks, a re-execution share of at least {openings} / (20 · chunks): the two targets
can both hold only for tasks of ≥ {least} chunks, and with this rule (k = {k}, each task
checked with the same probability, so a device cannot tell which of its tasks are safe to
fake) for tasks of ≥ {least_rule} chunks.{cannot}
"""

ECONOMY_CANNOT = """

**At {chunks} chunks the two targets cannot both hold**, under any sampling policy: the
least re-execution share that still catches f = 10 % within 20 tasks with probability 0.99
is {share} % ({whole} % in whole chunks), above 5 %. (Against a device that fakes exactly
{faked} of every task's {chunks} chunks, distinct indices catch more per check: {checks}
checks of k chunks suffice, {fixed} % — {fixed_verdict}.) This rule costs {rule} % there; the
old one (every task until trusted) cost more; {chunks}-chunk tasks keep the catch
target at that price, and bigger tasks (or a lower catch target) meet both.
"""

ECONOMY = """
**What limits it.** The live share at {chunks} chunks was {live}; the expected share of a
new device's first 20 tasks is {expected} under this rule and {old} under the old one
(every task until trusted). A live run of a few devices over some 20 tasks each sees a few
dozen checks, so its share scatters around the expected one by about a third of it; a
share near the old rule's says the coordinator measured still draws checks the old way.
"""

FOOTPRINT = """
**What limits it.** The agent as installed is two processes: the update launcher (`run`,
{launcher} MB) and the daemon it starts from the active release slot ({daemon} MB, {daemon_ratio} ×
the dependencies-only process). The launcher imports only its configuration and the slot
files — what is left over a bare interpreter is the standard library it uses (logging,
subprocess, dataclasses, tomllib) — and the daemon holds what heartbeats and work need
(aiohttp, PyNaCl, psutil, the protocol core); python-tuf, the PyPA installer and
cryptography run in short-lived helper processes (an update check, a certificate request),
and zeroconf loads only with mDNS on (on a device without `coordinator_url` it adds about
4 MB). Summed RSS counts the interpreter and the C library, which both processes map, once
in each: their PSS, shown above, is lower.

**What would close it.** A launcher that is not a Python process (a few hundred kB of C,
or systemd's own restart with the slot switch in an `ExecStartPre`), so that only one
interpreter is counted.
"""

LATENCY = """
**What limits it.** The path holds about ten fsyncs in a row: on the device the accepted
assignment (file and directory), the trace (file and directory), the proof in the outbox
(file and directory) and the queue entry's removal, all before the proof is sent; on the
coordinator the assignment's commit before it is pushed and the proof's commit before its
202. An fsync costs 0.3 ms on this disk when the machine is quiet and 1–1.5 ms under the
load of these runs (a cProfile of the agent over 43 tasks: 444 fsyncs, 0.63 s), so the
same code gives a p50 of 9–23 ms from run to run as the load average moves (the full
runs made while writing this: 9, 20 and 23 ms). Before the agent's status writes were
coalesced the p50 was 34–40 ms.

**What would close it.** Fewer fsyncs on the path, without giving up durability: the
queue entry's removal need not be durable before sending (after a crash, an entry that
comes back is recognised as already in the outbox, or — if its proof was delivered — run
again and its proof answered 409 `duplicate`: compute lost, never a proof), and the trace
and the outbox entry could share one file and one fsync.
"""

CLUSTER = """
**What limits it.** Both nodes and the PostgreSQL server run on this machine's cores,
beside the load generator, so these figures say what the shared database costs, not what
a second host adds.

- *Ingestion* is bound by CPU. While batches were sent, PostgreSQL alone used {pg} cores
  and the nodes {nodes}, beside the load generator signing the proofs; SQLite does the
  same work inside the coordinator's process, with no server and no round trip per
  statement. Two nodes reached {batched} of one SQLite node's batched rate and {single}
  of its one-per-request rate.
- *Heartbeats* are bound by the one write lock that every write of every node takes in
  turn, and by the machine's two cores that the nodes, PostgreSQL and the load generator
  share: at {devices} devices the nodes and PostgreSQL used {cpu} cores together, and
  {shed} heartbeats were shed. Heartbeats that wait for a node's writer are stored by one
  job in a few set-based statements (`coalesce.py`: one `UPDATE … FROM (VALUES …)
  RETURNING`, one `INSERT`), so the lock is held for a handful of round trips per group
  instead of five per heartbeat. In two runs apart from this one, the same minutes
  before and after that change, two nodes at 5,000 devices accepted 353 and then 990 of
  the 1,000 heartbeats/s offered; the figure moves much from run to run here (this
  document's run is one more). Sampling PostgreSQL's sessions every 20 ms at 5,000
  devices shows where a writer's open transaction spends its time: before the change,
  51 % waiting for the node's next statement, 38 % waiting for the other node's write
  lock, at most 10 % executing and 1 % syncing the WAL; after it (965 heartbeats/s
  accepted), 51 %, 20 %, 25 % and 3 %. As commits queue, the heartbeats' standing delay
  passes `server.max_queue_delay_ms` and the nodes shed, as one node does past
  saturation.
- *What would lift it*: the remaining writes grouped as heartbeats and proofs now are
  (each scheduling round and spot-check still has a savepoint of its own, two round
  trips around its statements), and, on real hosts, nodes that do not share their cores
  with the database and the load generator.
"""

OPTIMISATIONS = """## What was optimised, before and after

Each pair measured on this machine in the same few minutes (development runs of the
benchmarks above and timings of the step itself); the shared machine makes single
figures move, the direction and size of each change did not.

| change | measured before → after |
| --- | --- |
| the agent's status file written once per moment of changes (50 ms), not on each of a task's four or five state changes | submit → accepted overhead p50 34–40 ms → 12–13 ms |
| `POST /v1/proofs/batch`: many proofs, one request and one durable commit, checks on a worker thread; the agent's outbox sends what waits in batches of up to 64 | batched several times the one-per-request rate in the same run (table 1 has this run's figures) |
| a proof's signature checked once (it was checked twice) | one Ed25519 verification per proof instead of two |
| a heartbeat no longer wakes a scheduling round (only a device that may just have become schedulable for waiting work does) | 2,802 → 224 rounds in a 30-s profile of 3,000 devices; coordinator CPU at 1,000 heartbeats/s 0.81 → 0.55–0.63 cores |
| scheduling rounds write only when something is overdue | one durable commit less per round (and on a new task's path) |
| canonical JSON of signed messages by the C encoder where provably identical to RFC 8785 (a property test compares them) | 21.8 → 6.0 µs for a heartbeat |
| exact EPS in integers, one reduction | 13.1 → 5.0 µs |
| heartbeat signatures checked on a thread of their own, in batches | the Ed25519 call (~57 µs) leaves the event loop |
| block formation: plain tuples, one set-based `UPDATE`, batched spot-check inserts, payload encoded once, cheaper challenge derivation | 10,000 receipts (4-chunk tasks, new devices) 424 → 259 ms |
| block membership as one proof seq range per block (schema v7) instead of the block's height written into every proof row; formation reads a narrow covering index, not the rows with PoT and output; random spot-checks stored without indices (derived when the challenge is sent), the every-time ones inserted by one `INSERT … SELECT`; the spot-check state rule written without an `IN` list (SQLite built a temporary table per inserted row to check it); device passes read once per block | 10,000 receipts (8-chunk tasks): new devices 277 → 41 ms, trusted 175 → 31 ms; 65,535: 1,800 → 369 ms and 1,204 → 290 ms |
| each TLS connection's read buffer bounded at 32 KiB instead of asyncio's 256 KiB | coordinator RSS with 10,000 devices connected 3,148 → 945 MB |
| `aeamc-agent run` reaches the launcher without the command-line module (no HTTP client, signatures, certificates or telemetry in it); the daemon runs TUF checks and certificate work in helper processes and loads zeroconf only with mDNS | idle agent RSS (launcher + daemon) 113.8 → 60.5 MB, 1.98 → 1.04 × the dependencies-only process (launcher 51.3 → 16.6 MB, daemon 62.6 → 43.9 MB; PSS 39.7 MB) |
| the agent keeps its connection to the coordinator open past its longest heartbeat gap (it was aiohttp's 15 s, under the 30-s interval) | 6,337 → 926 bytes on the wire per heartbeat; no new TLS connection per heartbeat |
| heartbeats and proofs decoded into their models by compiled msgspec decoders when valid (anything else goes through the strict parser, which refuses it as before); the five middlewares merged into one layer that no longer copies the request; exact EPS over a per-configuration common denominator; models serialised from a per-class member list | event loop per heartbeat (py-spy, 3,000 devices, TLS handshakes apart) 605 → 389 µs: JSON and schema 66 → 28, middlewares 80 → 22, EPS 18 → 5, canonical JSON 38 → 33; per proof in the handlers: single 1,206 → 708 µs, batched 354 → 156 µs; batched ingestion 1,250 → 1,600 proofs/s; those were single runs: four interleaved pairs of 3,000-device runs made later (66bcaef against the code with worker processes, one worker) gave the same medians before and after, 697 and 696 µs on the loop and 1.35 and 1.36 ms of CPU per heartbeat, each code spreading 464–1,101 µs between runs, so this row's heartbeat figures are within this machine's noise |
| one worker process per core sharing the port (`SO_REUSEPORT`), the store deciding replays and duplicates, one leader (SPEC §16) | 5,000 devices at 5 s (1,000 heartbeats/s offered): 626 → 1,009 accepted/s, coordinator 1.06 → 1.34 cores (0.68 + 0.66); batched ingestion 1,699 → 1,780 proofs/s (0.69 + 0.58 cores): the load generator holds the rest of the two cores |
| load shedding on how long requests wait (`server.max_queue_delay_ms`: the event loop's lateness, or the heartbeats' standing delay), not only on requests in flight; the benchmark's devices send their first heartbeat as they connect, as agents do (before, thousands of connections opened early sat idle past `server.header_timeout_s`, were closed, and reconnected together) | `make bench`, 10,000 devices, two workers: errors 9,508 → 0, p99 23.9 → 3.9 s (32,352 heartbeats shed with `Retry-After` instead); 5,000 devices: accepted 662 → 925 of 1,000 heartbeats/s, p99 10.2 → 0.58 s, errors 111 → 0 |
| a batch of proofs stored set-based (one `UPDATE` per device, one `INSERT`, one record count and one settling query per batch, instead of six statements in a savepoint per proof); a batch's signatures checked together on the verifier's thread, off the event loop; an accepted proof wakes the scheduler only when tasks wait for devices | per batched proof, one worker (py-spy, the same minutes, 66bcaef → this code): event loop 393 → 263 µs (Ed25519 75 → 4, the handlers' logic 129 → 52); the writer's statements and settling 248 → 237 µs, unchanged within noise; 1,231 → 1,455 proofs/s with the reference at 22,238 and 17,999/s |
| heartbeats that wait for the writer stored by one job in set-based statements (`coalesce.py`; each still answered as if stored alone, and written alone if the group's write fails) | two nodes over PostgreSQL, `make bench ARGS="--only cluster"` at 589816d then at this code, the same minutes: 5,000 devices 353 → 990 of 1,000 heartbeats/s offered, shed 15,120 → 288, p99 977 → 329 ms; 10,000 devices 413 → 793/s; proofs within noise (batched 2,031 → 2,181/s, one per request 374 → 320/s) |
| proofs that wait for the writer, single or in batches of several requests, stored by one job through the same set-based write a batch already had (`coalesce.py`) | `make bench ARGS="--only ingestion --only cluster"` at 920e066 then at this code, the same minutes, medians of 5 rounds: two nodes over PostgreSQL, one proof per request 280 → 371/s (rounds 269–300 → 299–384), batched 1,649 → 1,888/s; one SQLite node batched 3,445 → 3,927/s, one per request 944 → 871/s (rounds 762–1,256 → 742–1,004: within noise) |
"""

HOW_TO_PROFILE = """## How these figures are taken, and how to profile

- `make bench` runs everything (about 11–13 minutes here); `make bench ARGS=--quick` runs
  every benchmark at a tiny size (a check of the harness); `ARGS="--only fleet"` runs one.
  Only a full run rewrites this document (the others write it only with `--doc PATH`).
- Each benchmark module also runs alone: `python -m bench.fleet 1000 5000`,
  `python -m bench.ingest 1 /tmp/ingest.prof` (the second argument runs the coordinator
  under cProfile and writes its profile there), `python -m bench.blocks 10000`,
  `python -m bench.latency 40`, `python -m bench.wasm` (`--quick` for the tiny sizes).
- Sampling profiles by stage: `python -m bench.fleet --workers 1 --profile DIR 3000` and
  `python -m bench.ingest --workers 1 --spy DIR 3` sample every coordinator process with
  py-spy and print the microseconds per heartbeat or per batched proof by stage (TLS,
  HTTP, decoding, Ed25519, SQLite …), on the event loop and on other threads
  (`bench/spy.py`). py-spy counts a thread that is ready but waiting for a core as
  running, so on a busy machine every stage grows: compare runs made in the same minutes,
  several of each, interleaved.
- `bench/transport.py` is the one place the benchmarks' transport (URL scheme, TLS
  contexts, client certificates, the daemons' transport settings) is chosen.
"""

WASM = """**What limits it.** The sandbox's determinism has a price the native build does not pay,
and the table above splits it. (1) NaN canonicalisation: after every floating-point
operation Cranelift adds a compare and a select that replace any NaN by the canonical one
(the one place IEEE 754 lets hardware differ), so float-heavy inner loops — Mandelbrot's
is four multiplies and four adds — run several instructions per operation instead of one;
integer kernels do not pay it. (2) Fuel: a counter in the instance's context is updated
in every basic block and checked at loop heads, which costs most in short loops; the row without either
shows what is left. (3) Vectorisation is not where it goes: GCC 12 vectorises at `-O2`
(its very-cheap cost model), and the documented client build already passes `-msimd128`,
so the WebAssembly kernels use 128-bit SIMD, which the sandbox runs deterministically
(integer lanes; float lanes are canonicalised like scalars); the last row, built with the
flag once more, shows the same figures and the same fuel. What would close it: nothing
within a deterministic sandbox. Neither fuel nor NaN canonicalisation can go without
giving up a chunk's deterministic cost or its bytes, so integer and SIMD-friendly kernels
(the int8 product) reach the target while a float kernel with short inner loops, like
Mandelbrot, stays near a fifth of native; such a kernel written in fixed-point integers
pays no canonicalisation.
"""
