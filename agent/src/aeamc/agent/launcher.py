"""``aeamc-agent run``: the small, stable supervisor of the agent release that runs.

The launcher comes with the base installation (the Debian package) and is never updated
by a fleet update; it starts the daemon (``aeamc-agent daemon``) from the active release
slot — the slot's directory first on ``PYTHONPATH``, over the base installation's
dependencies — and watches it:

- the daemon exits with ``EX_RESTART`` after installing a release and asking for it:
  the launcher starts that release **on trial**;
- a release on trial must confirm its health (its first accepted heartbeat) within
  ``updates.health_deadline_s``. If it exits first, or the deadline passes, or it fails
  to confirm over ``MAX_TRIAL_STARTS`` starts (power cuts), the launcher stops it,
  switches back to the previous release, records the failure (never offered again), and
  leaves a report for the previous release's daemon to deliver;
- once confirmed, the trial is committed; the previous release stays installed, older
  ones are removed.

Signals are passed on to the daemon; the daemon dies with the launcher (``PR_SET_PDEATHSIG``),
so a ``kill -9`` of the service never leaves an orphan behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from aeamc.shared.runtime.clock import now_ms
from aeamc.shared.versions import newer

from . import __version__
from .config import AgentConfig
from .slots import BASE, Slots, SlotState, Trial

log = logging.getLogger(__name__)

#: The daemon's exit status meaning "start me again, on the release I asked for".
EX_RESTART = 75
#: A release on trial that has not confirmed its health after this many starts failed.
MAX_TRIAL_STARTS = 2
POLL_S = 0.2
STOP_GRACE_S = 20.0
LAUNCHER_ENV = "AEAMC_AGENT_LAUNCHER"
SLOT_ENV = "AEAMC_AGENT_SLOT"
_PR_SET_PDEATHSIG = 1


class Launcher:
    def __init__(self, config: AgentConfig, config_path: Path, verbose: int = 0) -> None:
        self.config = config
        self.config_path = config_path
        self.verbose = verbose
        self.slots = Slots(config.state_dir)
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._forward)
        while True:
            state = self._prepare()
            if self.stopping:  # a signal between two daemons: start none
                return 0
            self.child = self._spawn(state.active)
            if self.stopping:  # a signal while it was being started
                self.child.send_signal(signal.SIGTERM)
            code = self._supervise(state)
            self.child = None
            if self.stopping:
                return code
            state = self.slots.load()
            if state.trial is not None and self.slots.confirmed(state.trial.version):
                self._commit(state)
                state = self.slots.load()
            if code == EX_RESTART:
                continue
            if state.trial is not None:
                self._rollback(state, f"release {state.trial.version} exited with status {code}")
                continue
            return code

    def _prepare(self) -> SlotState:
        """The state to start from: a requested release goes on trial; trials are counted."""
        state = self.slots.load()
        requested = self.slots.take_request()
        if requested is not None and requested != state.active and state.trial is None:
            log.info("starting release %s on trial (from %s)", requested, _name(state.active))
            state.trial = Trial(version=requested, previous=state.active, started_ms=now_ms())
            state.active = requested
        trial = state.trial
        if trial is not None:
            if trial.starts >= MAX_TRIAL_STARTS:
                self._rollback(
                    state,
                    f"release {trial.version} did not confirm its health in {trial.starts} starts",
                )
                state = self.slots.load()
            else:
                trial.starts += 1
                trial.started_ms = now_ms()
        if not self.slots.installed(state.active):
            log.error("release %s is not installed; running the base installation", state.active)
            state.active, state.trial = BASE, None
        elif state.active != BASE and not newer(state.active, __version__):
            # The package was upgraded past the release: the package's own code wins.
            log.info(
                "the base installation (%s) is newer than release %s", __version__, state.active
            )
            self.slots.remove(state.active)
            state.active, state.previous, state.trial = BASE, None, None
        self.slots.save(state)
        return state

    def _supervise(self, state: SlotState) -> int:
        assert self.child is not None
        trial = state.trial
        deadline = (
            time.monotonic() + self.config.update_health_deadline_s if trial is not None else None
        )
        while True:
            code = self.child.poll()
            if code is not None:
                return code
            if trial is not None and self.slots.confirmed(trial.version):
                self._commit(self.slots.load())
                trial = deadline = None
            if deadline is not None and time.monotonic() > deadline and not self.stopping:
                assert trial is not None
                log.error(
                    "release %s did not confirm its health in %.0f s; rolling back",
                    trial.version,
                    self.config.update_health_deadline_s,
                )
                self._stop_child()
                self._rollback(
                    self.slots.load(),
                    f"release {trial.version} did not confirm its health within "
                    f"{self.config.update_health_deadline_s:.0f} s",
                )
                return EX_RESTART
            time.sleep(POLL_S)

    # -- transitions ---------------------------------------------------------------------------

    def _commit(self, state: SlotState) -> None:
        trial = state.trial
        if trial is None:
            return
        state.previous = trial.previous
        state.trial = None
        self.slots.save(state)
        self.slots.clear_confirmation()
        removed = self.slots.prune({state.active, trial.previous})
        log.info(
            "release %s is healthy; kept %s to roll back to%s",
            trial.version,
            _name(trial.previous),
            f", removed {', '.join(removed)}" if removed else "",
        )

    def _rollback(self, state: SlotState, reason: str) -> None:
        trial = state.trial
        if trial is None:
            return
        log.error("rolling back to %s: %s", _name(trial.previous), reason)
        state.failed[trial.version] = reason
        state.active = trial.previous if self.slots.installed(trial.previous) else BASE
        state.trial = None
        self.slots.save(state)
        self.slots.clear_confirmation()
        self.slots.remove(trial.version)
        running = state.active or __version__
        self.slots.add_report(trial.version, "rolled_back", reason, running, now_ms())

    # -- the daemon process -------------------------------------------------------------------

    def _spawn(self, version: str) -> subprocess.Popen[bytes]:
        env = dict(os.environ)
        env[LAUNCHER_ENV] = str(os.getpid())
        env[SLOT_ENV] = version
        if version != BASE:
            slot = str(self.slots.site(version))
            env["PYTHONPATH"] = os.pathsep.join(p for p in (slot, env.get("PYTHONPATH")) if p)
        cmd = [sys.executable, "-m", "aeamc.agent.cli", "--config", str(self.config_path)]
        cmd += ["-v"] * self.verbose + ["daemon"]
        log.info("starting the agent (%s)", _name(version))
        return subprocess.Popen(cmd, env=env, preexec_fn=_die_with_parent)  # noqa: PLW1509

    def _stop_child(self) -> None:
        child = self.child
        if child is None or child.poll() is not None:
            return
        child.send_signal(signal.SIGTERM)
        try:
            child.wait(STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.child.send_signal(signum)


def _name(version: str) -> str:
    return f"release {version}" if version else f"the base installation ({__version__})"


def _die_with_parent() -> None:
    """In the child, before exec: get SIGKILL when the launcher dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
