"""Benchmark 5, agent footprint: an enrolled, idle agent heartbeating every 30 s — its RSS
and CPU over 60 s, and the bytes on the wire per heartbeat — against, in the same
minute, a bare Python process and a process that only imports the agent's dependencies.

The agent is the real daemon (``aeamc-agent run``) with its real telemetry source; its
traffic passes through a byte-counting TCP relay (a load-generator process), so the bytes
are what crossed the socket, headers and all, and the new connections are counted.

The target is judged on RSS summed over the agent's processes (the launcher and the
daemon); PSS and USS, sampled alongside, show how much of that the two share.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import time
from typing import Any

from . import procs, stats
from .agentproc import Agent

TARGET_RSS_RATIO = 1.15
TARGET_CPU_PCT = 0.2
#: The modules the agent uses of each distribution it declares (agent and shared core):
#: what the reference process imports. ``deps_import`` refuses to run when a declared
#: dependency is missing here, so the reference cannot fall behind the agent.
DEPS_MODULES: dict[str, tuple[str, ...]] = {
    "aiohttp": ("aiohttp", "aiohttp.web"),
    "pynacl": ("nacl.signing",),
    "psutil": ("psutil",),
    "rfc8785": ("rfc8785",),
    "zeroconf": ("zeroconf", "zeroconf.asyncio"),
    "cryptography": ("cryptography.x509",),
    "prometheus-client": ("prometheus_client",),
    "tuf": ("tuf.ngclient",),
    "installer": ("installer",),
}


def declared_dependencies() -> set[str]:
    """The agent's and the shared core's required distributions (no extras, no aeamc-*)."""
    out = set()
    for dist in ("aeamc-agent", "aeamc-shared"):
        for req in importlib.metadata.requires(dist) or []:
            name = re.match(r"[A-Za-z0-9._-]+", req)
            if name and "extra ==" not in req and not name[0].startswith("aeamc"):
                out.add(name[0].lower().replace("_", "-"))
    return out


def deps_import() -> str:
    missing = declared_dependencies() - DEPS_MODULES.keys()
    if missing:
        raise RuntimeError(f"bench/footprint.py: DEPS_MODULES lacks {sorted(missing)}")
    return "import " + ", ".join(m for mods in DEPS_MODULES.values() for m in mods)


def _idle_python(imports: str, seconds: float) -> subprocess.Popen[bytes]:
    code = f"{imports}\nimport time\ntime.sleep({seconds})"
    return subprocess.Popen([sys.executable, "-c", code])


def _last_seq(coord: procs.Coordinator, device_id: str) -> int:
    for d in coord.call("GET", "/v1/devices", role="operator")["devices"]:
        if d["device_id"] == device_id:
            return int(d["last_seq"])
    return -1


def measure(
    window_s: float = 60.0, interval_s: float = 30.0, settle_s: float = 3.0
) -> dict[str, Any]:
    settings = {"protocol": {"heartbeat_interval_s": max(1, int(interval_s))}}
    with (
        procs.workspace("footprint") as root,
        procs.Coordinator(root / "coordinator", settings) as coord,
    ):
        relay = procs.spawn_loadgen(["proxy", "--target", str(coord.port)], root / "relay.log")
        agent = None
        refs: list[subprocess.Popen[bytes]] = []
        try:
            port = procs.read_json_line(relay, "the relay")["port"]
            agent = Agent(
                root / "agent",
                procs.transport().url(port),
                coord.enroll_token(1),
                {"heartbeat": {"interval_s": interval_s}},
                telemetry=None,  # the real psutil source, as on a device
            ).start()
            deadline = time.monotonic() + 60
            while _last_seq(coord, agent.device_id) < 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("the agent did not enroll in time")
                time.sleep(0.2)
            refs = [_idle_python("", window_s + 30), _idle_python(deps_import(), window_s + 30)]
            time.sleep(settle_s)  # start-up over (imports, first telemetry), for all three
            pids = {"agent": agent.pid, "bare": refs[0].pid, "deps": refs[1].pid}
            seq0 = _last_seq(coord, agent.device_id)
            wire0 = procs.command(relay, "count", "the relay's counts")
            cpu0 = {k: procs.cpu_seconds(p) for k, p in pids.items()}
            t0 = time.monotonic()
            rss: dict[str, list[float]] = {k: [] for k in pids}
            # Extra columns, not judged: what the processes share (libraries, the
            # interpreter) counted once (PSS) or not at all (USS).
            shared: dict[str, dict[str, list[float]]] = {
                kind: {k: [] for k in pids} for kind in ("pss", "uss")
            }
            # The agent as installed is a launcher and the daemon it supervises.
            parts: dict[str, list[float]] = {"launcher": [], "daemon": []}
            while time.monotonic() - t0 < window_s:
                for k, p in pids.items():
                    rss[k].append(procs.rss_bytes(p, children=True) / 2**20)
                    for kind, size in procs.shared_memory_bytes(p, children=True).items():
                        shared[kind][k].append(size / 2**20)
                own = procs.rss_bytes(agent.pid) / 2**20
                supervised = rss["agent"][-1] - own  # 0: no launcher (updates off)
                parts["launcher"].append(own if supervised else 0.0)
                parts["daemon"].append(supervised or own)
                time.sleep(1.0)
            elapsed = time.monotonic() - t0
            cpu = {k: (procs.cpu_seconds(p) - cpu0[k]) / elapsed * 100 for k, p in pids.items()}
            wire1 = procs.command(relay, "count", "the relay's counts")
            beats = _last_seq(coord, agent.device_id) - seq0
            children = len(procs.psutil.Process(agent.pid).children(recursive=True))
        finally:
            for r in refs:
                r.kill()
                r.wait()
            if agent is not None:
                agent.stop()
            relay.kill()
            relay.wait()
    up = wire1["to_coordinator"] - wire0["to_coordinator"]
    down = wire1["from_coordinator"] - wire0["from_coordinator"]
    rss_med = {k: stats.summary(v)["median"] for k, v in rss.items()}
    ratio = rss_med["agent"] / rss_med["deps"]
    return {
        "window_s": window_s,
        "heartbeat_interval_s": interval_s,
        "heartbeats_in_window": beats,
        "rss_mb": {k: stats.summary(v) for k, v in rss.items()},
        "rss_mb_by_process": {k: stats.summary(v) for k, v in parts.items()},
        "rss_ratio_to_deps": ratio,
        "pss_mb": {k: stats.summary(v) for k, v in shared["pss"].items()},
        "uss_mb": {k: stats.summary(v) for k, v in shared["uss"].items()},
        "daemon_rss_ratio_to_deps": stats.summary(parts["daemon"])["median"] / rss_med["deps"],
        "deps_imported": deps_import(),
        "rss_ratio_to_bare": rss_med["agent"] / rss_med["bare"],
        "cpu_pct_of_one_core": cpu,
        "agent_child_processes": children,
        "bytes_per_heartbeat": (up + down) / beats if beats else None,
        "bytes_up_per_heartbeat": up / beats if beats else None,
        "bytes_down_per_heartbeat": down / beats if beats else None,
        "connections_in_window": wire1["connections"] - wire0["connections"],
        "target_rss_ratio": TARGET_RSS_RATIO,
        "target_cpu_pct": TARGET_CPU_PCT,
        "rss_target_met": ratio <= TARGET_RSS_RATIO,
        "cpu_target_met": cpu["agent"] <= TARGET_CPU_PCT,
    }


if __name__ == "__main__":
    w = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    json.dump(measure(w, w / 2), sys.stdout, indent=2)
