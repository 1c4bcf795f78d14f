"""Several worker processes for one coordinator: ``aeamc-coordinator run --workers N``.

Python runs one thread of Python code at a time per process, so one process uses about
one core however many the machine has. With ``N`` > 1 this supervisor prepares the state
directory once (schema, certificate authority, server certificate: nothing a worker
could race another on), reserves the port, and starts ``N`` worker processes. Each
listens on the same port with ``SO_REUSEPORT``, so the kernel spreads connections over
them, and each does its requests' TLS, parsing, signature and commitment checks itself.
One of them leads (leadership.py); the others relay to it what only it answers
(forwarding.py) and follow the others' writes (follower.py).

The supervisor itself serves nothing. It restarts a worker that ends (a leader that ends
is replaced by a waiting worker within a quarter second, then restarted as a worker),
passes ``SIGTERM``/``SIGINT`` on to every worker and waits for them, and tells systemd it
is ready once every worker listens. A worker whose supervisor ends is killed by the
kernel (``PR_SET_PDEATHSIG``), so no worker outlives the service.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

from aeamc.shared.exits import EX_CONFIG, EX_OK
from aeamc.shared.runtime.systemd import notify as notify_systemd

from . import workermetrics
from .config import CoordinatorConfig

log = logging.getLogger(__name__)

#: Environment variable naming the descriptor a worker reports "listening" on.
READY_FD = "AEAMC_WORKER_READY_FD"
#: Seconds a worker may take to start listening.
START_TIMEOUT_S = 60.0
#: Seconds workers get to finish after SIGTERM before they are killed (within the
#: unit's TimeoutStopSec=30s).
STOP_TIMEOUT_S = 25.0
_PR_SET_PDEATHSIG = 1


def worker_count(requested: int) -> int:
    """``requested`` workers; 0 means one per core."""
    return requested if requested > 0 else (os.cpu_count() or 1)


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` with ``SO_REUSEPORT``: every worker binds one
    to the same port, and the kernel balances new connections over them."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def report_ready() -> None:
    """Tell the supervisor this worker listens (nothing outside a supervisor)."""
    fd = os.environ.pop(READY_FD, "")
    if fd.isdigit():
        with contextlib.suppress(OSError):
            os.write(int(fd), b"ready\n")
            os.close(int(fd))


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@dataclass
class _Worker:
    index: int
    process: subprocess.Popen[bytes]
    started: float
    ready_fd: int
    ready: bool = False
    failures: int = field(default=0)


class Supervisor:
    """Starts, watches and stops the worker processes (see the module docstring)."""

    def __init__(self, config: CoordinatorConfig, command: list[str], workers: int) -> None:
        self.config = config
        #: The command line of one worker, without its port (``--worker-port`` is added).
        self.command = command
        self.count = workers
        self.port = 0
        self.workers: dict[int, _Worker] = {}
        self._stopping = False
        self._restart_at: dict[int, float] = {}
        self._failures: dict[int, int] = {}

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; the exit status of the service."""
        workermetrics.clear(self.config.state_dir)
        reserved = listening_socket(self.config.server.host, self.config.server.port)
        self.port = reserved.getsockname()[1]
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._stop)
        try:
            for i in range(self.count):
                self._spawn(i)
            status = self._wait_until_ready()
            if status != EX_OK:
                return status
            (self.config.state_dir / "coordinator.port").write_text(f"{self.port}\n")
            notify_systemd("READY=1")
            log.info("%d workers listening on port %d", self.count, self.port)
            return self._supervise()
        finally:
            self._stop_all()
            reserved.close()

    def _stop(self, signum: int, frame: object) -> None:
        self._stopping = True

    def _spawn(self, index: int) -> None:
        read_fd, write_fd = os.pipe()
        env = {**os.environ, READY_FD: str(write_fd)}
        process = subprocess.Popen(
            [*self.command, "--worker-port", str(self.port)],
            env=env,
            pass_fds=(write_fd,),
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - the supervisor runs no threads
        )
        os.close(write_fd)
        self.workers[index] = _Worker(index, process, time.monotonic(), read_fd)

    def _check_ready(self, timeout: float) -> None:
        waiting = {w.ready_fd: w for w in self.workers.values() if not w.ready}
        if not waiting:
            time.sleep(timeout)
            return
        with contextlib.suppress(InterruptedError):
            readable, _, _ = select.select(list(waiting), [], [], timeout)
            for fd in readable:
                worker = waiting[fd]
                worker.ready = os.read(fd, 64).startswith(b"ready")
                if worker.ready:
                    os.close(fd)

    def _wait_until_ready(self) -> int:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not all(w.ready for w in self.workers.values()):
            if self._stopping:
                return EX_OK
            for w in self.workers.values():
                code = w.process.poll()
                if code is not None:
                    log.error("worker %d exited with status %d while starting", w.index, code)
                    return code if code == EX_CONFIG else 1
            if time.monotonic() > deadline:
                log.error("workers did not start listening within %.0f s", START_TIMEOUT_S)
                return 1
            self._check_ready(0.1)
        return EX_OK

    def _supervise(self) -> int:
        while not self._stopping:
            self._check_ready(0.2)
            now = time.monotonic()
            for index, w in list(self.workers.items()):
                code = w.process.poll()
                if code is None:
                    continue
                del self.workers[index]
                with contextlib.suppress(OSError):
                    os.close(w.ready_fd)
                quick = now - w.started < 10.0
                failures = self._failures.get(index, 0) + 1 if quick else 0
                self._failures[index] = failures
                delay = min(30.0, 0.5 * 2**failures)
                log.warning(
                    "worker %d (pid %d) ended with status %d; restarting it in %.1f s",
                    index,
                    w.process.pid,
                    code,
                    delay,
                )
                self._restart_at[index] = now + delay
            for index, at in list(self._restart_at.items()):
                if now >= at and not self._stopping:
                    del self._restart_at[index]
                    self._spawn(index)
        return EX_OK

    def _stop_all(self) -> None:
        for w in self.workers.values():
            if w.process.poll() is None:
                w.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for w in self.workers.values():
            try:
                w.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop in time: killing it", w.index)
                w.process.kill()
                w.process.wait()
            with contextlib.suppress(OSError):
                os.close(w.ready_fd)


def worker_command(config_path: str | None, verbose: bool, workers: int) -> list[str]:
    """The command line of one worker of this service."""
    cmd = [sys.executable, "-m", "aeamc.coordinator.cli"]
    if config_path:
        cmd += ["--config", config_path]
    if verbose:
        cmd.append("-v")
    return [*cmd, "run", "--workers", str(workers)]
