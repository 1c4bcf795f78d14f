"""Sampling profiles of a running coordinator, for the "what limits it" analysis.

cProfile traces every call of one thread and roughly doubles Python's share of the time;
a sampling profiler (py-spy, pinned in the development requirements) reads the stacks of
every thread from outside at a fixed rate, so the coordinator runs at its own speed and the
event loop can be told apart from its SQLite writer and Ed25519 threads.

``python -m bench.fleet --profile DIR 5000`` samples the coordinator during the measured
window; ``python -m bench.spy FILE`` prints the summary of a profile taken that way.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

RATE_HZ = 200
#: Frames of threads started by ``threading``: everything else is the event loop's thread.
_THREAD_ROOTS = ("Thread.run", "Thread._bootstrap")
#: Innermost frames that mean "waiting", which sampling without pausing the process cannot
#: always tell from running: the loop's poll, and threads waiting for work (the SQLite
#: writer and the Ed25519 thread block in C on their queues, so their own frame is the
#: innermost one py-spy sees).
_IDLE = (
    "EpollSelector.select",
    "Condition.wait",
    "SimpleQueue.get",
    "Queue.get",
    "Database._run_writer",
    "SignatureVerifier._run",
)

#: Where a sample's innermost frame lies → the stage of request handling it belongs to.
#: First match wins; a frame that matches none is "coordinator logic" when it is the
#: project's code and "other" when it is not.
STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("TLS", ("ssl.py", "asyncio/sslproto.py")),
    ("sockets and asyncio", ("asyncio/", "selectors.py")),
    ("HTTP (aiohttp)", ("aiohttp/", "multidict/", "yarl/")),
    ("JSON", ("json/", "msgspec/")),
    (
        "decoding, schema, canonical form",
        ("coordinator/wire.py", "shared/schema.py", "shared/messages.py", "shared/canonical.py"),
    ),
    ("Ed25519", ("nacl/", "coordinator/verifier.py", "shared/identity.py")),
    # A writer's own frame innermost is a statement in C: BEGIN, SAVEPOINT and mostly COMMIT,
    # whose fsync runs with the GIL released.
    ("SQLite", ("sqlite_utils/", "coordinator/db.py", "coordinator/store/", "sqlite3/")),
    (
        "middleware, metrics, logs",
        (
            "coordinator/front.py",
            "coordinator/status.py",
            "coordinator/metrics.py",
            "coordinator/overload.py",
            "coordinator/ratelimit.py",
            "coordinator/dashboard/",
            "coordinator/logs.py",
            "prometheus_client/",
            "logging/",
        ),
    ),
)
_OWN = ("coordinator/", "shared/")
#: The writer's own frame innermost: BEGIN, SAVEPOINT, RELEASE or COMMIT running in C.
_COMMIT = ("Database._commit_jobs",)


def executable() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: run `make deps` (requirements/dev.txt)")
    return found


def record(pid: int, seconds: float | None, out: Path) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` for ``seconds``, or until ``stop`` when None; the caller waits
    for the process."""
    cmd = [executable(), "record", "--pid", str(pid), "--subprocesses"]
    if seconds is not None:
        cmd += ["--duration", str(max(1, int(seconds)))]
    cmd += ["--rate", str(RATE_HZ), "--format", "raw", "--nonblocking", "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def sampling(pid: int, out: Path) -> Iterator[None]:
    """Sample ``pid`` and its children into ``out`` for as long as the block runs; py-spy
    writes its profile when it is interrupted."""
    sampler = record(pid, None, out)
    time.sleep(0.5)  # attached to every process before the block starts
    try:
        yield
    finally:
        sampler.send_signal(signal.SIGINT)
        sampler.wait(timeout=60)


@dataclass(frozen=True)
class Summary:
    seconds: float
    loop_samples: int
    thread_samples: int
    #: (share of the event loop's samples, innermost frame), largest first.
    loop_top: list[tuple[float, str]]

    @property
    def loop_busy(self) -> float:
        """The share of the window the event loop's thread was running (not waiting)."""
        return self.loop_samples / (self.seconds * RATE_HZ)


def _samples(paths: Path | list[Path]) -> Iterator[tuple[str, bool, int]]:
    """Each non-waiting sample of raw py-spy profiles (a missing file has none): its
    innermost frame, whether it was on the event loop's thread, and its count."""
    for path in [paths] if isinstance(paths, Path) else paths:
        if not path.exists():
            continue
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            frames = stack.split(";")
            if frames[-1].startswith(_IDLE):
                continue
            on_loop = not any(f.startswith(_THREAD_ROOTS) for f in frames)
            yield frames[-1], on_loop, int(count)


def summarize(path: Path, seconds: float, top: int = 25) -> Summary:
    """Self time by innermost frame, for the loop thread, waiting left out."""
    loop: Counter[str] = Counter()
    threads = 0
    for frame, on_loop, count in _samples(path):
        if on_loop:
            loop[frame] += count
        else:
            threads += count
    total = sum(loop.values())
    shares = [(n / total, frame) for frame, n in loop.most_common(top)] if total else []
    return Summary(seconds, total, threads, shares)


def stage_of(frame: str) -> str:
    """The stage (``STAGES``) of a sample whose innermost frame is ``frame``."""
    if frame.startswith(_COMMIT):
        return "SQLite transaction control (mostly COMMIT's fsync, GIL released)"
    where = frame[frame.rfind("(") + 1 :]
    for stage, prefixes in STAGES:
        if where.startswith(prefixes):
            return stage
    return "coordinator logic" if where.startswith(_OWN) else "other"


def stages(paths: Path | list[Path], requests: int) -> dict[str, dict[str, float]]:
    """Microseconds per request by stage, on the event loop and on other threads, from raw
    py-spy profiles of windows in which the process answered ``requests`` requests in all.

    Every process's samples count (``--subprocesses``): with several workers this is
    the cost per request of the whole coordinator. Waiting is left out (``_IDLE``)."""
    per_sample_us = 1e6 / RATE_HZ / max(requests, 1)
    out: dict[str, dict[str, float]] = {}
    for frame, on_loop, count in _samples(paths):
        row = out.setdefault(stage_of(frame), {"loop": 0.0, "threads": 0.0})
        row["loop" if on_loop else "threads"] += count * per_sample_us
    return dict(sorted(out.items(), key=lambda kv: -(kv[1]["loop"] + kv[1]["threads"])))


def render_stages(table: dict[str, dict[str, float]]) -> str:
    """``stages`` as a Markdown table, with the totals."""
    lines = ["| stage | µs on the loop | µs on other threads |", "| --- | ---: | ---: |"]
    for stage, row in table.items():
        lines.append(f"| {stage} | {row['loop']:.0f} | {row['threads']:.0f} |")
    loop = sum(r["loop"] for r in table.values())
    threads = sum(r["threads"] for r in table.values())
    lines.append(f"| **all** | **{loop:.0f}** | **{threads:.0f}** |")
    return "\n".join(lines)


def render(s: Summary) -> str:
    lines = [
        f"event loop busy {s.loop_busy:.0%} of {s.seconds:.0f} s "
        f"({s.loop_samples} samples; other threads {s.thread_samples})",
    ]
    lines += [f"{share:6.1%}  {frame}" for share, frame in s.loop_top]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(summarize(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 20)))
