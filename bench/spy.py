"""Sampling profiles of a running coordinator, for the "what limits it" analysis.

cProfile traces every call of one thread and roughly doubles Python's share of the time;
a sampling profiler (py-spy, pinned in the development requirements) reads the stacks of
every thread from outside at a fixed rate, so the coordinator runs at its own speed and the
event loop can be told apart from its SQLite writer and Ed25519 threads.

``python -m bench.fleet --profile DIR 5000`` samples the coordinator during the measured
window; ``python -m bench.spy FILE`` prints the summary of a profile taken that way.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

RATE_HZ = 200
#: Frames of threads started by ``threading``: everything else is the event loop's thread.
_THREAD_ROOTS = ("Thread.run", "Thread._bootstrap")
#: Innermost frames that mean "waiting", which sampling without pausing the process cannot
#: always tell from running: the loop's poll, and threads waiting for work.
_IDLE = ("EpollSelector.select", "Condition.wait", "SimpleQueue.get", "Queue.get")


def executable() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(found).exists():
        raise RuntimeError("py-spy is not installed: run `make deps` (requirements/dev.txt)")
    return found


def record(pid: int, seconds: float, out: Path) -> subprocess.Popen[bytes]:
    """Start sampling ``pid`` for ``seconds``; the caller waits for the process."""
    cmd = [executable(), "record", "--pid", str(pid), "--subprocesses"]
    cmd += ["--duration", str(max(1, int(seconds)))]
    cmd += ["--rate", str(RATE_HZ), "--format", "raw", "--nonblocking", "--output", str(out)]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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


def summarize(path: Path, seconds: float, top: int = 25) -> Summary:
    """Self time by innermost frame, for the loop thread, waiting left out."""
    loop: Counter[str] = Counter()
    threads = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        if frames[-1].startswith(_IDLE):
            continue
        if any(f.startswith(_THREAD_ROOTS) for f in frames):
            threads += int(count)
        else:
            loop[frames[-1]] += int(count)
    total = sum(loop.values())
    shares = [(n / total, frame) for frame, n in loop.most_common(top)] if total else []
    return Summary(seconds, total, threads, shares)


def render(s: Summary) -> str:
    lines = [
        f"event loop busy {s.loop_busy:.0%} of {s.seconds:.0f} s "
        f"({s.loop_samples} samples; other threads {s.thread_samples})",
    ]
    lines += [f"{share:6.1%}  {frame}" for share, frame in s.loop_top]
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(summarize(Path(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else 20)))
