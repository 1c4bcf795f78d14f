"""A small LAN made of Linux network namespaces, for tests that need real multicast.

``Lan(prefix, hosts)`` creates one namespace holding a bridge (``br0``) and one namespace
per host, each joined to the bridge by a veth pair (``eth0`` in the host namespace) with
an address in ``10.213.<subnet>.0/24``. Everything lives inside namespaces created here:
the host's own interfaces and routes are never touched, and ``close()`` deletes every
namespace (which takes the veths and the bridge with it).

Processes run inside a namespace through ``ip netns exec``, which execs (same pid), so
``CoordinatorProcess``/``AgentProcess`` work unchanged apart from the command prefix;
HTTP requests to a namespace go through a tiny ``python -c`` client run there.

Needs root and iproute2 with ``ip netns``; ``unavailable()`` says why not, or None.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from .agent import AgentProcess
from .coordinator import CoordinatorProcess


def unavailable() -> str | None:
    """Why namespaces cannot be used here, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    return None


def ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=30)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")


@dataclass
class Lan:
    prefix: str
    hosts: list[str]
    subnet: int = 213
    bridge_ns: str = ""
    namespaces: dict[str, str] = field(default_factory=dict)  # host -> namespace
    addresses: dict[str, str] = field(default_factory=dict)  # host -> IPv4 address

    def up(self) -> Lan:
        self.bridge_ns = f"{self.prefix}-br"
        created = [self.bridge_ns]
        ip("netns", "add", self.bridge_ns)
        try:
            ip("link", "set", "lo", "up", ns=self.bridge_ns)
            # No IGMP snooping: mDNS must flood to every port whatever the querier state.
            ip("link", "add", "br0", "type", "bridge", "mcast_snooping", "0", ns=self.bridge_ns)
            ip("link", "set", "br0", "up", ns=self.bridge_ns)
            for n, host in enumerate(self.hosts, start=1):
                ns = f"{self.prefix}-{host}"
                ip("netns", "add", ns)
                created.append(ns)
                port = f"p{n}"
                # Both ends are born inside namespaces: nothing appears in the root one.
                ip(
                    "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
                    ns=self.bridge_ns,
                )  # fmt: skip
                ip("link", "set", port, "master", "br0", "multicast", "on", "up", ns=self.bridge_ns)
                address = f"10.213.{self.subnet}.{n}"
                ip("link", "set", "lo", "up", ns=ns)
                ip("link", "set", "eth0", "multicast", "on", "up", ns=ns)
                ip("addr", "add", f"{address}/24", "dev", "eth0", ns=ns)
                ip("route", "add", "224.0.0.0/4", "dev", "eth0", ns=ns)
                self.namespaces[host] = ns
                self.addresses[host] = address
        except BaseException:
            for ns in created:
                subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
            raise
        return self

    def close(self) -> list[str]:
        """Delete every namespace; the ones that could not be deleted (should be none)."""
        failed = []
        for ns in [*self.namespaces.values(), self.bridge_ns]:
            if not ns:
                continue
            proc = subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)
            if proc.returncode != 0:
                failed.append(ns)
        return failed

    def link(self, host: str, state: str) -> None:
        """``up`` or ``down``: plug or unplug a host's cable (its port on the bridge)."""
        port = f"p{self.hosts.index(host) + 1}"
        ip("link", "set", port, state, ns=self.bridge_ns)


@contextlib.contextmanager
def running_lan(prefix: str, hosts: list[str]) -> Iterator[Lan]:
    """A LAN of ``hosts`` for the duration, named after ``prefix`` and this process (so
    two runs never share a namespace or a subnet), checked to leave no namespace
    behind."""
    pid = os.getpid()
    net = Lan(prefix=f"{prefix}{pid}", hosts=hosts, subnet=pid % 250 + 1)
    try:
        yield net.up()
    finally:
        failed = net.close()
        assert not failed, f"namespaces left behind: {failed}"
        assert not {ns for ns in existing_namespaces() if ns.startswith(net.prefix)}


def existing_namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return {line.split()[0] for line in out.stdout.splitlines() if line.strip()}


_CLIENT = r"""
import json, ssl, sys, urllib.error, urllib.request
a = json.load(sys.stdin)
ctx = ssl.create_default_context(cadata=a["ca_pem"])
ctx.minimum_version = ssl.TLSVersion.TLSv1_3
req = urllib.request.Request(a["url"], data=a["data"] and a["data"].encode(), method=a["method"])
if a["data"] is not None:
    req.add_header("Content-Type", "application/json")
if a["token"]:
    req.add_header("Authorization", "Bearer " + a["token"])
try:
    with urllib.request.urlopen(req, timeout=20, context=ctx) as r:
        status, body, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
except urllib.error.HTTPError as e:
    status, body, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
json.dump({"status": status, "body": body.hex(), "ctype": ctype}, sys.stdout)
"""


def ns_request(
    ns: str, method: str, url: str, body: Any = None, *, token: str | None = None, ca_pem: str
) -> tuple[int, Any]:
    """One HTTPS request made from inside namespace ``ns``, trusting ``ca_pem`` only:
    (status, JSON body or bytes)."""
    args = {
        "ca_pem": ca_pem,
        "url": url,
        "method": method,
        "data": json.dumps(body) if body is not None else None,
        "token": token,
    }
    proc = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", _CLIENT],
        input=json.dumps(args),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if proc.returncode != 0:
        raise AssertionError(f"request {method} {url} in {ns} failed: {proc.stderr[-2000:]}")
    reply = json.loads(proc.stdout)
    payload = bytes.fromhex(reply["body"])
    if reply["ctype"].startswith("application/json"):
        return reply["status"], json.loads(payload)
    return reply["status"], payload


@dataclass
class NetnsCoordinator(CoordinatorProcess):
    """A coordinator run inside namespace ``ns``, listening on ``address:port``."""

    ns: str = ""
    address: str = ""

    @property
    def url(self) -> str:
        return f"https://{self.address}:{self.port}"

    def command_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.root.glob("coordinator-*.log"))

    def request(  # type: ignore[override]
        self, method: str, path: str, body: Any = None, *, token: str | None = None
    ) -> tuple[int, Any]:
        return ns_request(self.ns, method, self.url + path, body, token=token, ca_pem=self.ca_pem)


@dataclass
class NetnsAgent(AgentProcess):
    """An agent run inside namespace ``ns`` (``ip netns exec`` keeps its pid)."""

    ns: str = ""

    def run_command(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *super().run_command()]
