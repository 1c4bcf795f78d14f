"""Real daemon processes for the benchmarks: a coordinator (``init`` then ``run``) on a free
loopback port with a state directory of its own, load generators, and their CPU and RSS.

Every process runs the installed product exactly as an operator would start it; only
the configuration differs (faster loops, no mDNS, no chain unless a benchmark needs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from tests.support.daemon import DaemonFolder

from .transport import transport

#: Coordinator settings common to the benchmarks: loopback only, no mDNS, no chain.
BASE_SETTINGS: dict[str, Any] = {
    "server": {
        "host": "127.0.0.1",
        "port": 0,
        "mdns": False,
        "max_connections_per_address": 100000,
    },
    "chain": {"enabled": False},
}


def raise_fd_limit() -> int:
    """Lift the soft open-file limit to the hard one (inherited by children we start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def toml(data: dict[str, Any]) -> str:
    lines = [f"{k} = {json.dumps(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for section, values in data.items():
        if isinstance(values, dict):
            lines.append(f"[{section}]")
            lines.extend(f"{k} = {json.dumps(v)}" for k, v in values.items())
    return "\n".join(lines) + "\n"


def merge(*parts: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part in parts:
        for k, v in part.items():
            if isinstance(v, dict):
                out.setdefault(k, {}).update(v)
            else:
                out[k] = v
    return out


def workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"aeamc-bench-{name}-"))


@contextlib.contextmanager
def workspace(name: str) -> Iterator[Path]:
    """A benchmark's own state folder: removed after success, kept (and named) on failure."""
    root = workdir(name)
    try:
        yield root
    except BaseException:
        print(f"bench: {name} failed; its logs and state are in {root}", file=sys.stderr)
        raise
    shutil.rmtree(root, ignore_errors=True)


@dataclass
class Coordinator(DaemonFolder):
    config_name = "coordinator.toml"
    settings: dict[str, Any] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    port: int = 0
    #: When set, ``run`` executes under cProfile and writes its profile here (the
    #: evidence behind the limits docs/performance.md names).
    profile: Path | None = None
    #: The address it listens on (``server.host`` must say the same).
    host: str = "127.0.0.1"
    _ssl: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        return transport().url(self.port, self.host)

    @property
    def ca_file(self) -> Path:
        """The coordinator's CA certificate: what every benchmark client trusts."""
        return transport().ca_file(self.state_dir)

    def ssl_context(self) -> ssl.SSLContext:
        """The client context of the set-up calls, built once (a build costs about a ms)."""
        if self._ssl is None:
            self._ssl = transport().client_ssl(self.ca_file.read_text())
        return self._ssl

    @property
    def log_path(self) -> Path:
        return self.root / "coordinator.log"

    def token(self, role: str) -> str:
        return (self.state_dir / "tokens" / f"{role}.token").read_text().strip()

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "aeamc.coordinator.cli", "--config", str(self.config_path)]

    def _run_cmd(self) -> list[str]:
        if self.profile is None:
            return [*self._cli(), "run"]
        prof = [sys.executable, "-m", "cProfile", "-o", str(self.profile)]
        return [*prof, "-m", "aeamc.coordinator.cli", "--config", str(self.config_path), "run"]

    def start(self, timeout: float = 60) -> Coordinator:
        self.root.mkdir(parents=True, exist_ok=True)
        settings = merge(
            {"state_dir": str(self.state_dir)},
            BASE_SETTINGS,
            transport().coordinator_settings,
            self.settings,
        )
        self.config_path.write_text(toml(settings))
        subprocess.run([*self._cli(), "init"], check=True, capture_output=True, timeout=120)
        port_file = self.state_dir / "coordinator.port"
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(self._run_cmd(), stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"coordinator exited; see {self.log_path}")
            if port_file.exists() and port_file.read_text().strip():
                self.port = int(port_file.read_text())
                return self
            time.sleep(0.05)
        raise RuntimeError("coordinator did not start in time")

    def stop(self) -> None:
        stop_process(self.process)

    def call(self, method: str, path: str, body: Any = None, role: str | None = None) -> Any:
        """A plain operator/client call (set-up and read-back, never the measured path)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if role:
            req.add_header("Authorization", f"Bearer {self.token(role)}")
        with urllib.request.urlopen(req, timeout=60, context=self.ssl_context()) as r:
            return json.loads(r.read())

    def enroll_token(self, uses: int) -> str:
        got = self.call("POST", "/v1/tokens", {"role": "enroll", "uses": uses}, "operator")
        return str(got["token"])

    def __enter__(self) -> Coordinator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_process(process: subprocess.Popen[Any] | None) -> None:
    """SIGTERM (a clean shutdown, like systemd's), then SIGKILL after 30 s."""
    if process is not None and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cpu_by_process(pid: int) -> dict[int, float]:
    """User + system CPU seconds of ``pid`` and of each of its live children, by pid."""
    out: dict[int, float] = {}
    try:
        p = psutil.Process(pid)
        for proc in [p, *p.children(recursive=True)]:
            with contextlib.suppress(psutil.NoSuchProcess):
                t = proc.cpu_times()
                out[proc.pid] = t.user + t.system
    except psutil.NoSuchProcess:
        pass
    return out


def cores_since(before: dict[int, float], t0: float, pid: int) -> dict[str, float]:
    """Cores each process of ``pid``'s tree used since ``before`` was taken at ``t0``:
    the supervisor as ``main``, its workers as ``worker-1``, ``worker-2``… (busiest
    first); a single-process coordinator is ``main`` alone."""
    after = cpu_by_process(pid)
    elapsed = max(time.monotonic() - t0, 1e-9)
    used = {p: (after[p] - before.get(p, 0.0)) / elapsed for p in after}
    out = {"main": used.pop(pid, 0.0)}
    for i, cores in enumerate(sorted(used.values(), reverse=True), start=1):
        out[f"worker-{i}"] = cores
    return out


def cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU time of a process (and, by default, its live children)."""
    try:
        p = psutil.Process(pid)
        t = p.cpu_times()
        total = t.user + t.system
        if children:
            for c in p.children(recursive=True):
                try:
                    ct = c.cpu_times()
                    total += ct.user + ct.system
                except psutil.Error:
                    pass
        return total
    except psutil.Error:
        return 0.0


def rss_bytes(pid: int, children: bool = False) -> int:
    try:
        p = psutil.Process(pid)
        total = p.memory_info().rss
        if children:
            for c in p.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += c.memory_info().rss
        return int(total)
    except psutil.Error:
        return 0


def shared_memory_bytes(pid: int, children: bool = False) -> dict[str, int]:
    """PSS and USS of a process (and its live children): RSS counts every shared page in
    full in each process that maps it, PSS shares it out, USS leaves it out."""
    out = {"pss": 0, "uss": 0}
    try:
        procs = [psutil.Process(pid)]
        if children:
            procs += procs[0].children(recursive=True)
    except psutil.Error:
        return out
    for p in procs:
        with contextlib.suppress(psutil.Error):
            m = p.memory_full_info()
            out["pss"] += int(m.pss)
            out["uss"] += int(m.uss)
    return out


def run_loadgen(args: list[str], timeout: float, log: Path | None = None) -> dict[str, Any]:
    """Run ``python -m bench.loadgen ARGS`` as its own process; return its JSON result."""
    out = log or Path(tempfile.gettempdir()) / f"aeamc-bench-loadgen-{os.getpid()}.log"
    with out.open("ab") as err:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.loadgen", *args],
            stdout=subprocess.PIPE,
            stderr=err,
            timeout=timeout,
            check=False,
            cwd=Path(__file__).resolve().parents[1],
        )
    if proc.returncode != 0:
        raise RuntimeError(f"load generator {args[0]} failed ({proc.returncode}); see {out}")
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def spawn_loadgen(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    """Start a load generator without waiting (stdin takes commands, stdout gives JSON lines)."""
    with log.open("ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            cwd=Path(__file__).resolve().parents[1],
        )


def read_json_line(proc: subprocess.Popen[bytes], what: str) -> dict[str, Any]:
    """The next JSON line a load generator prints; an error if it exited instead."""
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"load generator exited while waiting for {what}")
    return json.loads(line)  # type: ignore[no-any-return]


def command(proc: subprocess.Popen[bytes], line: str, what: str) -> dict[str, Any]:
    assert proc.stdin is not None
    proc.stdin.write(line.encode() + b"\n")
    proc.stdin.flush()
    return read_json_line(proc, what)
