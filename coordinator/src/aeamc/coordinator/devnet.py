"""A local AEAMC network on one machine: an Ethereum node (anvil), a coordinator and
several agents, each a separate process on loopback, finding each other over mDNS.

``aeamc devnet up`` keeps it running for development; ``aeamc devnet demo`` (what
``make demo`` runs, ``devnet_demo.py``) also submits a mix of tasks and a picture for a
WebAssembly kernel to render (``devnet_picture.py``), shows progress, and ends with a
summary computed from the running system and a receipt verified against the chain.

The agents report *simulated* telemetry (clearly labelled profiles: a device on
charge, one with a low battery, one too hot, one on mains, and a demo cheater) because
this machine has no battery to drain; everything else — signatures, scheduling, proofs,
spot-checks, blocks, anchoring — is the real thing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

import tomli_w

from aeamc.shared.runtime.coordinatorapi import CoordinatorApi
from aeamc.shared.runtime.tls import client_context, fingerprint
from aeamc.shared.taskclient import ClientSettings

from .devnet_procs import DevnetError, Proc, find_anvil, free_port

SIMULATION_ENV = "AEAMC_SIMULATED_TELEMETRY"


@dataclass(frozen=True)
class Profile:
    label: str
    telemetry: dict[str, Any]
    cheat_fraction: float = 0.0
    expect: str = ""


#: The five demo devices; more agents cycle through them.
PROFILES = (
    Profile(
        "phone on charge",
        {"battery_pct": 70, "charging": True, "cpu_temp_c": 40, "cpu_load_permille": 150},
        expect="runs tasks",
    ),
    Profile(
        "phone, low battery",
        {"battery_pct": 12, "charging": False, "cpu_temp_c": 35, "cpu_load_permille": 50},
        expect="skipped: EPS too low (and its own policy refuses below 20 %)",
    ),
    Profile(
        "hot tablet",
        {"battery_pct": 95, "charging": True, "cpu_temp_c": 85, "cpu_load_permille": 900},
        expect="refuses work while above 75 °C",
    ),
    Profile(
        "server on mains",
        {"battery_pct": None, "charging": None, "cpu_temp_c": 50, "cpu_load_permille": 200},
        expect="runs tasks",
    ),
    Profile(
        "DEMO CHEATER",
        {"battery_pct": None, "charging": None, "cpu_temp_c": 45, "cpu_load_permille": 100},
        cheat_fraction=0.5,
        expect="fakes half its chunks; caught by a spot-check",
    ),
)


@dataclass
class Devnet:
    root: Path
    agents: int = 5
    out: TextIO = sys.stdout
    procs: list[Proc] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=dict)
    rpc_url: str = ""
    api: str = ""
    _ssl: Any = None

    # -- start-up ---------------------------------------------------------------------

    def up(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self._chain()
        self._coordinator()
        # One use per agent: an enrollment token is always limited (10 uses by default).
        body = {"role": "enroll", "label": "devnet", "uses": self.agents}
        token = self.call("POST", "/v1/tokens", body, "operator")
        for i in range(self.agents):
            self._agent(i, PROFILES[i % len(PROFILES)], token["token"])
        # Enrolled, and heartbeating long enough to be judged by the scheduler (SPEC §4).
        self._wait(
            lambda: (
                len(devs := self.devices()) == self.agents and all(d["last_seq"] >= 2 for d in devs)
            ),
            60,
            "agents to enroll and send heartbeats",
        )

    def _chain(self) -> None:
        port = free_port()
        self.rpc_url = f"http://127.0.0.1:{port}"
        anvil = Proc(
            "anvil",
            [str(find_anvil()), "--host", "127.0.0.1", "--port", str(port), "--block-time", "1"],
            self.root / "anvil.log",
        )
        anvil.start()
        self.procs.append(anvil)
        self._wait(self._chain_ready, 30, "the local chain")
        self.say(f"chain      anvil at {self.rpc_url} (a local Ethereum node, 1 block/s)")

    def rpc(self, method: str, *params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})
        req = urllib.request.Request(  # noqa: S310 - loopback URL we built
            self.rpc_url, body.encode(), {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310
            reply = json.loads(r.read())
        if "error" in reply:
            raise DevnetError(f"{method}: {reply['error']}")
        return reply["result"]

    def _chain_ready(self) -> bool:
        try:
            return self.rpc("eth_chainId") is not None
        except (OSError, ValueError, DevnetError):
            return False

    def coordinator_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "aeamc.coordinator.cli", "--config", str(self.coord_config)]
        proc = subprocess.run(
            [*cmd, *args], capture_output=True, text=True, timeout=120, check=False
        )
        if proc.returncode != 0:
            raise DevnetError(f"aeamc-coordinator {' '.join(args)}: {proc.stderr.strip()}")
        return proc

    @property
    def coord_dir(self) -> Path:
        return self.root / "coordinator"

    @property
    def coord_config(self) -> Path:
        return self.coord_dir / "coordinator.toml"

    def _coordinator(self) -> None:
        port = free_port()
        self.api = f"https://127.0.0.1:{port}"
        self.coord_dir.mkdir(exist_ok=True)
        config = {
            "state_dir": str(self.coord_dir / "state"),
            "server": {
                "host": "127.0.0.1",
                "port": port,
                "mdns": True,
                "mdns_interfaces": "127.0.0.1",
                # Every agent of the demo connects from 127.0.0.1.
                "max_connections_per_address": 100000,
            },
            "scheduler": {"tick_s": 0.3, "max_inflight_per_device": 2},
            "blocks": {"interval_s": 2.0},
            # The demo's devices run a handful of tasks each: every task of a new device
            # is checked, so the demo cheater is always caught.
            "spot_checks": {"retry_s": 1.0, "catch_probability": 1.0},
            "protocol": {"stale_after_s": 15},
            "chain": {
                "rpc_url": self.rpc_url,
                "anchor_interval_s": 3.0,
                "confirmations": 2,
                "poll_s": 0.5,
            },
        }
        self.coord_config.write_text(tomli_w.dumps(config))
        self.coordinator_cli("init")
        from .anchoring.wallet import ensure_wallet_file

        wallet, _ = ensure_wallet_file(self.coord_dir / "state" / "anchor-wallet.key")
        # A development chain: give the anchoring wallet 100 ether out of thin air.
        self.rpc("anvil_setBalance", wallet.address, hex(100 * 10**18))
        deployed = self.coordinator_cli("chain", "deploy").stdout.strip().splitlines()
        proc = Proc(
            "coordinator",
            [
                sys.executable,
                "-m",
                "aeamc.coordinator.cli",
                "--config",
                str(self.coord_config),
                "run",
            ],
            self.coord_dir / "coordinator.log",
        )
        proc.start()
        self.procs.append(proc)
        self._wait(lambda: self._get("/v1/health") is not None, 60, "the coordinator")
        self.say(f"contract   {deployed[0] if deployed else 'deployed'}")
        self.say(f"coordinator {self.api}  (advertised over mDNS as _aeamc-coord._tcp)")
        self.say(f"CA         {self.ca_path}  SHA-256 {self.ca_fingerprint()}")

    def _agent(self, i: int, profile: Profile, token: str) -> None:
        home = self.root / f"agent-{i}"
        home.mkdir(exist_ok=True)
        steps = {"steps": [{"at_s": 0, **profile.telemetry}]}
        (home / "profile.json").write_text(json.dumps(steps))
        config: dict[str, Any] = {
            "state_dir": str(home / "state"),
            "enrollment_token": token,
            # Only this network's coordinator, even with other devnets on the same host.
            "coordinator_ca_fingerprint": self.ca_fingerprint(),
            "listen": {"host": "127.0.0.1", "port": 0},
            "heartbeat": {"interval_s": 1.0, "enroll_retry_s": 1.0},
            "telemetry": {
                "source": "simulated",
                "profile": str(home / "profile.json"),
                "interval_s": 0.5,
            },
            "network": {"retry_initial_s": 0.3, "retry_max_s": 2.0},
            "mdns": {"enabled": True, "interfaces": ["127.0.0.1"]},
        }
        if profile.cheat_fraction:
            config["demo"] = {"cheat_fraction": profile.cheat_fraction}
        (home / "agent.toml").write_text(tomli_w.dumps(config))
        env = {**os.environ, SIMULATION_ENV: "1"}
        cli = [sys.executable, "-m", "aeamc.agent.cli", "--config", str(home / "agent.toml")]
        init = subprocess.run(
            [*cli, "init"], capture_output=True, text=True, env=env, timeout=60, check=False
        )
        if init.returncode != 0:
            raise DevnetError(f"aeamc-agent init: {init.stderr.strip()}")
        device_id = next(
            line.split()[-1] for line in init.stdout.splitlines() if line.startswith("device id")
        )
        copy = i // len(PROFILES)
        self.labels[device_id] = profile.label + (f" #{copy + 1}" if copy else "")
        proc = Proc(f"agent-{i}", [*cli, "run"], home / "agent.log", env)
        proc.start()
        self.procs.append(proc)

    # -- talking to the coordinator ---------------------------------------------------

    def token(self, role: str) -> str:
        return (self.coord_dir / "state" / "tokens" / f"{role}.token").read_text().strip()

    def call(self, method: str, path: str, body: Any = None, role: str | None = None) -> Any:
        """One API request; its JSON answer."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.api + path, data=data, method=method)  # noqa: S310
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if role:
            req.add_header("Authorization", f"Bearer {self.token(role)}")
        with urllib.request.urlopen(req, timeout=30, context=self._tls()) as r:  # noqa: S310
            return json.loads(r.read())

    def client_api(self) -> CoordinatorApi:
        """The demo's client as a client program talks to the coordinator (uploads)."""
        settings = ClientSettings(url=self.api, token=self.token("client"), ca_file=self.ca_path)
        return CoordinatorApi(settings)

    @property
    def ca_path(self) -> Path:
        return self.coord_dir / "state" / "ca" / "ca.pem"

    def _tls(self) -> Any:
        """TLS 1.3, trusting only the devnet coordinator's own CA."""
        if self._ssl is None:
            self._ssl = client_context(ca_pem=self.ca_path.read_text())
        return self._ssl

    def ca_fingerprint(self) -> str:
        return fingerprint(self.ca_path.read_text())

    def _get(self, path: str, role: str | None = None) -> Any:
        try:
            return self.call("GET", path, role=role)
        except (OSError, ValueError):
            return None

    def devices(self) -> list[dict[str, Any]]:
        got = self._get("/v1/devices", "operator")
        return got["devices"] if got else []

    def status(self) -> dict[str, Any]:
        return self.call("GET", "/v1/status", role="operator")

    # -- running ----------------------------------------------------------------------

    def say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if not p.alive():
                    raise DevnetError(f"{p.name} exited; see {p.log}")
            if cond():
                return
            time.sleep(0.25)
        raise DevnetError(f"timed out waiting for {what}")

    def stop(self) -> None:
        # Agents first (they keep their proofs), then the coordinator, then the chain.
        for p in reversed(self.procs):
            p.stop()


def submit_mix(net: Devnet, count: int) -> list[dict[str, Any]]:
    """Alternate sha256-chain and classify-int8 tasks; returns what was submitted."""
    digits = json.loads(
        resources.files("aeamc.coordinator").joinpath("devnet_digits.json").read_text()
    )
    tasks = []
    for i in range(count):
        if i % 3 == 2:
            body = {
                "kind": "classify-int8",
                "chunks": 4,
                "params": {"samples": digits["samples"], "batch_size": 16},
            }
        else:
            body = {
                "kind": "sha256-chain",
                "chunks": 8,
                "params": {"seed": os.urandom(32).hex(), "iterations": 20_000},
            }
        got = net.call("POST", "/v1/tasks", body, "client")
        tasks.append({"task_id": got["task_id"], "kind": body["kind"]})
    return tasks


def progress_line(net: Devnet, total: int, extra: str = "") -> str:
    s = net.status()
    tasks = s["tasks"]
    done = sum(tasks.get(k, 0) for k in ("completed", "disputed", "failed"))
    anch = s.get("anchoring") or {}
    devices = " ".join(
        f"{net.labels.get(d['device_id'], d['device_id'][:6])}="
        f"{'-' if d['eps'] is None else format(d['eps'], '.2f')}/{d['state']}"
        for d in net.devices()
    )
    return (
        f"tasks {done}/{total}  proofs {sum(s['proofs'].values())}  "
        f"spot-checks {s['spot_checks']}  blocks {s['blocks']}  "
        f"anchored {anch.get('blocks_anchored', 0)}  {extra + '  ' if extra else ''}| {devices}"
    )


def finished(net: Devnet, total: int, cheaters: int) -> bool:
    s = net.status()
    done = sum(s["tasks"].get(k, 0) for k in ("completed", "disputed", "failed"))
    quarantined = s["devices"].get("quarantined", 0)
    anch = s.get("anchoring") or {}
    pending_checks = s["spot_checks"].get("pending", 0)
    blocks_ok = s["blocks"] > 0 and anch.get("unanchored_blocks", 1) == 0
    return done >= total and quarantined >= cheaters and pending_checks == 0 and blocks_ok


def summary(net: Devnet, tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """What happened, read back from the coordinator."""
    views = [net.call("GET", f"/v1/tasks/{t['task_id']}", role="client") for t in tasks]
    per_device: dict[str, dict[str, Any]] = {}
    for d in net.devices():
        per_device[d["device_id"]] = {
            "label": net.labels.get(d["device_id"], "?"),
            "eps": d["eps"],
            "state": d["state"],
            "state_reason": d["state_reason"],
            "eligibility": d["eligibility"],
            "ran": {},
            "refused": {},
            "spot_checks": {},
        }
    for v in views:
        for a in v["assignments"]:
            dev = per_device.get(a["device_id"])
            if dev and a["state"] == "refused":
                dev["refused"][a["reason"]] = dev["refused"].get(a["reason"], 0) + 1
        for p in v["proofs"]:
            dev = per_device.get(p["device_id"])
            if dev:
                dev["ran"][v["kind"]] = dev["ran"].get(v["kind"], 0) + 1
                verdict = p["spot_check"] or "not sampled"
                dev["spot_checks"][verdict] = dev["spot_checks"].get(verdict, 0) + 1
    digits = json.loads(
        resources.files("aeamc.coordinator").joinpath("devnet_digits.json").read_text()
    )
    correct = total = 0
    for v in views:
        if v["kind"] == "classify-int8" and v["output"]:
            labels = _labels(bytes.fromhex(v["output"]))
            correct += sum(a == b for a, b in zip(labels, digits["labels"], strict=False))
            total += len(digits["labels"])
    s = net.status()
    return {
        "devices": per_device,
        "tasks": s["tasks"],
        "blocks": s["blocks"],
        "anchoring": s.get("anchoring") or {},
        "classify_correct": (correct, total),
    }


def _labels(output: bytes) -> list[int]:
    labels: list[int] = []
    pos = 0
    while pos < len(output):
        n = int.from_bytes(output[pos : pos + 4], "little")
        labels += output[pos + 4 : pos + 4 + n]
        pos += 4 + n
    return labels


def verify_one_receipt(net: Devnet, tasks: list[dict[str, Any]]) -> tuple[int, str]:
    """Fetch one anchored receipt's proof bundle and check it with ``aeamc verify``."""
    for t in tasks:
        view = net.call("GET", f"/v1/tasks/{t['task_id']}", role="client")
        for p in view["proofs"]:
            if p["credit"] != "verified":
                continue
            path = f"/v1/receipts/{t['task_id']}/{p['device_id']}/proof"
            try:
                bundle = net.call("GET", path)
            except urllib.error.HTTPError:
                continue
            file = net.root / "bundle.json"
            file.write_text(json.dumps(bundle, indent=2))
            proc = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "aeamc.shared.cli",
                    "verify",
                    str(file),
                    "--rpc",
                    net.rpc_url,
                ],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            return proc.returncode, (proc.stdout + proc.stderr).strip()
    return 1, "no anchored receipt to verify"


def print_summary(
    net: Devnet, result: dict[str, Any], verify: tuple[int, str], picture: Sequence[str] = ()
) -> None:
    """The summary: per device, the tasks, the chain, ``picture``'s lines, a receipt."""
    say = net.say
    say("\n== Summary " + "=" * 70)
    say(f"{'device':20} {'EPS':>5}  {'state':11} {'ran':36} {'spot-checks':16} why")
    for dev in result["devices"].values():
        ran = ", ".join(f"{k.split('-')[0]} ×{n}" for k, n in sorted(dev["ran"].items()))
        ran = ran or "nothing"
        checks = ", ".join(f"{k} {n}" for k, n in sorted(dev["spot_checks"].items())) or "-"
        if dev["state"] == "quarantined":
            why = dev["state_reason"] or "quarantined"
        elif dev["refused"]:
            why = "refused: " + ", ".join(f"{k} ×{n}" for k, n in dev["refused"].items())
        elif not dev["ran"]:
            why = f"skipped: {dev['eligibility']}"
        else:
            why = dev["eligibility"]
        eps = "-" if dev["eps"] is None else f"{dev['eps']:.2f}"
        row = f"{dev['label'][:20]:20} {eps:>5}  {dev['state']:11} {ran[:36]:36}"
        say(f"{row} {checks[:16]:16} {why}")
    a = result["anchoring"]
    say(f"\ntasks     {result['tasks']}")
    say(
        f"blocks    {result['blocks']} formed, {a.get('blocks_anchored', 0)} anchored with "
        f"{a.get('confirmations', '?')} confirmations on chain {a.get('chain_id')} "
        f"(contract {a.get('contract')})"
    )
    correct, total = result["classify_correct"]
    if total:
        say(f"classify-int8: {correct}/{total} digits labelled correctly by the devices")
    for line in picture:
        say(line)
    code, text = verify
    say("\n$ aeamc verify bundle.json --rpc " + net.rpc_url + f"   (exit {code})")
    for line in text.splitlines():
        say("  " + line)
    say(f"dashboard {net.api}/  (operator token: {net.token('operator')})")
    say(
        f"  the browser warns until you trust the devnet's CA {net.ca_path} (SHA-256 "
        f"{net.ca_fingerprint()}): import it as an authority, or "
        f"curl --cacert {net.ca_path} {net.api}/v1/health"
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


@contextlib.contextmanager
def running(root: Path | None, agents: int, keep: bool) -> Iterator[Devnet]:
    tmp = None
    if root is None:
        tmp = Path(tempfile.mkdtemp(prefix="aeamc-devnet-"))
        root = tmp
    net = Devnet(root, agents)
    # SIGTERM and SIGHUP (a closed terminal, `kill`, a service manager) stop the network
    # as Ctrl-C does, instead of ending this process and leaving its children running.
    previous = {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield net
    finally:
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)  # a second signal must not cut the stop short
        net.say("stopping the devnet…")
        net.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if tmp is not None and not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def wait_until_interrupted(net: Devnet) -> None:
    """Until Ctrl-C, SIGTERM or SIGHUP, or until one of the network's processes ends."""
    with contextlib.suppress(KeyboardInterrupt):
        while all(p.alive() for p in net.procs):
            time.sleep(1)


def up(agents: int, root: Path | None) -> int:
    with running(root, agents, keep=True) as net:
        net.up()
        net.say(f"devnet is up in {net.root}: coordinator {net.api}, chain {net.rpc_url}")
        net.say(f"operator token {net.token('operator')}  client token {net.token('client')}")
        net.say("Ctrl-C stops it.")
        wait_until_interrupted(net)
    return 0
