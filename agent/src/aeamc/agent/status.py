"""What ``aeamc-agent status`` shows, whether or not the daemon runs.

The running daemon writes ``status.json`` in the state directory every few seconds and on
every change. ``status`` reads it when the daemon is alive (its pid answers); otherwise it
builds the same document from the state directory and a fresh telemetry reading.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aeamc.shared.eps import eps

from . import __version__
from .energy import EnergyPolicy
from .outbox import summary
from .slots import Slots
from .state import (
    ABANDONED_DIR,
    OUTBOX_DIR,
    QUEUE_DIR,
    REJECTED_DIR,
    STATUS_FILE,
    TRACES_DIR,
    CoordinatorPin,
    read_json,
)
from .telemetry import TelemetrySource
from .workqueue import summary as queue_summary

if TYPE_CHECKING:
    from .config import AgentConfig
    from .view import AgentView


def daemon_status(agent: AgentView) -> dict[str, Any]:
    """The status document of a running agent."""
    c = agent.config
    link = agent.link
    pin = link.pin if link else None
    runner = agent.runner
    telemetry = agent.monitor.telemetry()
    last = runner.last if runner else None
    return {
        "running": agent.running,
        "pid": os.getpid(),
        "launcher_pid": _launcher_pid(),
        "device_id": agent.device_id,
        "public_key": agent.key.public_key.hex(),
        "version": __version__,
        "started_at_ms": agent.started_ms,
        "updated_at_ms": agent.clock_ms(),
        "endpoint": agent.endpoint(),
        "coordinator": {
            "url": agent.locator.url,
            "discovery": "config" if c.coordinator_url else "mdns",
            "coordinator_id": pin.coordinator_id if pin else None,
            "cluster_id": pin.cluster_id if pin else None,
            "state": link.state if link else None,
            "last_heartbeat_ms": link.last_heartbeat_ms if link else None,
            "last_error": link.last_error if link else None,
        },
        "flags": dict(link.flags) if link else {},
        "tls": agent.tls.status(),
        "updates": agent.updater.status() if agent.updater is not None else None,
        "telemetry_source": agent.source.name,
        "telemetry": telemetry.to_dict(),
        "eps": round(eps(telemetry), 4),
        "energy": _energy(agent.monitor.policy),
        "accepting_work": agent.refusal_reason() is None,
        "refusal_reason": agent.refusal_reason(),
        "task": runner.current.to_json() if runner and runner.current else None,
        "queue": {
            "count": agent.queue.count,
            "max": c.max_queued_tasks,
            "task_ids": [e.task_id for e in agent.queue.entries()],
            "abandoned": agent.queue.abandoned_count(),
        },
        "last_task": None
        if last is None
        else {
            "task_id": last.task_id,
            "result": last.result,
            "detail": last.detail,
            "at_ms": last.at_ms,
        },
        "outbox": summary(agent.outbox.directory, agent.outbox.rejected_dir)
        | {"max_count": c.outbox_max_count, "max_bytes": c.outbox_max_bytes},
        "last_delivery_error": agent.sender.last_error if agent.sender else None,
        "traces_kept": agent.traces.count(),
        "demo_cheater": c.is_demo_cheater,
        "cheat_fraction": c.cheat_fraction,
    }


def offline_status(
    config: AgentConfig,
    *,
    device_id: str | None,
    public_key: str | None,
    identity_error: str | None,
    source: TelemetrySource | None,
    source_error: str | None,
) -> dict[str, Any]:
    """The status document built from disk and a fresh reading (no daemon running)."""
    state = config.state_dir
    try:
        pin = CoordinatorPin.load(state)
    except Exception:
        pin = None
    previous = _previous(state)
    latency = (previous.get("telemetry") or {}).get("net_latency_us") if previous else None
    reading = source.read() if source is not None else None
    telemetry = (
        reading.telemetry(latency if isinstance(latency, int) else None) if reading else None
    )
    policy = EnergyPolicy(config.energy)
    if telemetry is not None:
        policy.update(telemetry)
    slots = Slots(state)
    releases = slots.load()
    return {
        "running": False,
        "pid": None,
        "device_id": device_id,
        "public_key": public_key,
        "identity_error": identity_error,
        # What `run` starts: the active release, else this installation.
        "version": releases.active or __version__,
        "endpoint": None,
        "coordinator": {
            "url": config.coordinator_url or (pin.url if pin else None),
            "discovery": "config" if config.coordinator_url else "mdns",
            "coordinator_id": pin.coordinator_id if pin else None,
            "cluster_id": pin.cluster_id if pin else None,
            "state": pin.state if pin else None,
            "last_heartbeat_ms": (previous or {}).get("coordinator", {}).get("last_heartbeat_ms"),
            "last_error": None,
        },
        "flags": (previous or {}).get("flags", {}),
        "tls": _offline_tls(state, pin),
        "updates": {
            "state": "not_running",
            "slot": releases.active,
            "previous": releases.previous,
            "trial": releases.trial.version if releases.trial else None,
            "failed": releases.failed,
            "installed": slots.installed_versions(),
            "last_error": None,
        },
        "telemetry_source": config.telemetry_source,
        "telemetry_error": source_error,
        "telemetry": telemetry.to_dict() if telemetry else None,
        "eps": round(eps(telemetry), 4) if telemetry else None,
        "energy": _energy(policy) if telemetry else None,
        "accepting_work": False,
        "refusal_reason": "not_running",
        "task": None,
        "queue": queue_summary(state / QUEUE_DIR, state / ABANDONED_DIR)
        | {"max": config.max_queued_tasks},
        "last_task": (previous or {}).get("last_task"),
        "outbox": summary(state / OUTBOX_DIR, state / REJECTED_DIR)
        | {"max_count": config.outbox_max_count, "max_bytes": config.outbox_max_bytes},
        "traces_kept": sum(1 for _ in (state / TRACES_DIR).glob("*.json"))
        if (state / TRACES_DIR).is_dir()
        else 0,
        "demo_cheater": config.is_demo_cheater,
        "cheat_fraction": config.cheat_fraction,
    }


def _offline_tls(state: Path, pin: CoordinatorPin | None) -> dict[str, Any]:
    """What the pinned CA and the certificate on disk say (read only, nothing created)."""
    from aeamc.shared.runtime import tls

    out: dict[str, Any] = {"ca_fingerprint": pin.ca_fingerprint if pin else None}
    cert_file = state / "tls" / "cert.pem"
    try:
        cert = tls.load_pem(cert_file.read_text())
    except (OSError, tls.TlsError):
        out["certificate"] = None
    else:
        start, end = tls.validity_ms(cert)
        out["certificate"] = {
            "serial": tls.serial_hex(cert),
            "not_before_ms": start,
            "not_after_ms": end,
        }
    return out


def live_status(state_dir: Path) -> dict[str, Any] | None:
    """The running daemon's status file, or ``None`` when no daemon is alive."""
    status = _previous(state_dir)
    if not status or not status.get("running") or not _alive(status.get("pid")):
        return None
    return status


def render_text(status: Mapping[str, Any]) -> str:
    """The human-readable form of a status document."""
    coord = status.get("coordinator") or {}
    telemetry = status.get("telemetry") or {}
    energy = status.get("energy")
    outbox = status.get("outbox") or {}
    daemon = f"running (pid {status['pid']})" if status.get("running") else "not running"
    rows = [
        ("device id", status.get("device_id") or "-"),
        ("daemon", daemon),
        (
            "coordinator",
            f"{coord.get('url') or '-'} ({coord.get('discovery')}), "
            f"state {coord.get('state') or 'unknown'}",
        ),
        ("coordinator CA", (status.get("tls") or {}).get("ca_fingerprint") or "not pinned yet"),
        ("telemetry source", status.get("telemetry_source")),
    ]
    if status.get("identity_error"):
        rows.append(("identity error", status["identity_error"]))
    if status.get("telemetry_error"):
        rows.append(("telemetry error", status["telemetry_error"]))
    for key, label, unit in (
        ("battery_pct", "  battery", " %"),
        ("charging", "  charging", ""),
        ("cpu_temp_mc", "  cpu temperature", " m°C"),
        ("cpu_load_permille", "  cpu load", " ‰"),
        ("mem_available_kb", "  memory available", " kB"),
        ("net_latency_us", "  latency", " µs"),
    ):
        value = telemetry.get(key)
        rows.append((label, "unknown" if value is None else f"{value}{unit}"))
    if energy is None:
        policy = "unknown (no telemetry)"
    else:
        policy = "work allowed" if energy["allowed"] else f"no work ({energy['reason']})"
    refusal = status.get("refusal_reason")
    task = status.get("task")
    queue = status.get("queue") or {}
    flags = status.get("flags") or {}
    rows += [
        ("EPS", "-" if status.get("eps") is None else status["eps"]),
        ("energy policy", policy),
        ("accepting work", "yes" if status.get("accepting_work") else f"no ({refusal})"),
        (
            "task",
            f"{task['task_id']} {task['chunks_done']}/{task['chunks']} {task['state']}"
            if task
            else "none",
        ),
        (
            "queue",
            f"{queue.get('count', 0)} of {queue.get('max', '?')} tasks "
            f"(the running one included), {queue.get('abandoned', 0)} abandoned",
        ),
        (
            "outbox",
            f"{outbox.get('count', 0)} proofs, {outbox.get('bytes', 0)} bytes, "
            f"{outbox.get('rejected', 0)} rejected",
        ),
        (
            "flags",
            ", ".join(f"{k}={'on' if v else 'off'}" for k, v in sorted(flags.items())) or "none",
        ),
    ]
    updates = status.get("updates")
    if updates:
        slot = updates.get("slot") or "base installation"
        line = f"{slot}, {updates.get('state')}"
        if updates.get("last_error"):
            line += f"; {updates['last_error']}"
        rows.append(("updates", line))
    if status.get("demo_cheater"):
        rows.append(("DEMO CHEATER", f"fakes {status['cheat_fraction']:.0%} of chunk outputs"))
    return "".join(f"{label + ':':<20}{value}\n" for label, value in rows)


# --- helpers ------------------------------------------------------------------------------


def _energy(policy: EnergyPolicy) -> dict[str, Any]:
    t = policy.thresholds
    return {
        "allowed": policy.allowed,
        "reason": policy.reason,
        "conditions": sorted(policy.active),
        "thresholds": {
            "min_battery_pct": t.min_battery_pct,
            "resume_battery_pct": t.resume_battery_pct,
            "max_temp_c": t.max_temp_c,
            "resume_temp_c": t.resume_temp_c,
            "run_only_when_charging": t.run_only_when_charging,
        },
    }


def _previous(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = read_json(state_dir / STATUS_FILE)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _alive(pid: Any) -> bool:
    """Whether the daemon ``pid`` still runs.

    A zombie does not: a daemon killed with its launcher can wait a long time for a reaper
    (in a container, pid 1 often reaps nothing), and its status file is no longer true.
    """
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, owned by another user (the daemon's service account)
    import psutil

    try:
        alive: bool = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        return alive
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:
        return True  # it exists (kill 0 said so); we may not look closer


def _launcher_pid() -> int | None:
    """The pid of the launcher that supervises this daemon (``aeamc-agent run``), if any."""
    from .launcher import LAUNCHER_ENV

    value = os.environ.get(LAUNCHER_ENV, "")
    return int(value) if value.isdigit() else None
