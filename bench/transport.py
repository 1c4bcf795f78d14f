"""The one place every benchmark client and server gets its transport from.

A benchmark measures the product as deployed, so the transport (URL scheme, the server's
TLS settings, a client's SSL context and certificate) must be the product's. Everything
in ``bench/`` asks this module, so switching the whole suite to TLS 1.3 with client
certificates changes this file only.

Today the coordinator and the agent speak plain HTTP on loopback; ``NAME`` says so in
every result, so no figure is mistaken for one measured over TLS.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Transport:
    """How to reach a server, and what to add to the daemons' configuration."""

    name: str
    scheme: str
    #: Extra coordinator TOML (merged into ``[server]`` and other sections).
    coordinator_settings: dict[str, Any] = field(default_factory=dict)
    #: Extra agent TOML.
    agent_settings: dict[str, Any] = field(default_factory=dict)
    #: Certificate chain and key of the benchmarks' own device endpoints (TLS only).
    endpoint_cert: Path | None = None
    endpoint_key: Path | None = None
    #: CA bundle that verifies the coordinator (TLS only; default: the system's).
    ca_file: Path | None = None

    def url(self, port: int, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{port}"

    def server_ssl(self) -> ssl.SSLContext | None:
        """The TLS context of a benchmark's own server playing a device's endpoint (the
        coordinator pushes assignments to it); ``None`` on plain HTTP."""
        if self.scheme == "http":
            return None
        if self.endpoint_cert is None:
            raise ValueError("a TLS transport needs endpoint_cert (and endpoint_key)")
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(self.endpoint_cert, self.endpoint_key)
        return ctx

    def client_ssl(self, device_cert: Path | None = None) -> ssl.SSLContext | bool:
        """What a benchmark client passes as aiohttp's ``ssl=``; ``False`` on plain HTTP.

        ``device_cert`` is the client certificate a device got at enrollment (mutual TLS).
        """
        if self.scheme == "http":
            return False
        ctx = ssl.create_default_context(cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        if device_cert is not None:
            ctx.load_cert_chain(device_cert)
        return ctx


def transport() -> Transport:
    """The transport every benchmark uses (the deployed one)."""
    return Transport(name="HTTP on loopback (TLS not yet in the product)", scheme="http")
