"""Which JSON-RPC endpoints a chain client may use: answers from the chain decide whether
a receipt is anchored, so they must come from the node the user named, not from anyone
on the path.

``https://`` protects that; plain ``http://`` is taken only to this host's loopback (a
local node, as the demo network runs) or when the user says so explicitly for a node on
a segment they trust. Pure: the address is read from the URL, nothing is resolved.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def is_loopback_host(host: str | None) -> bool:
    """Whether ``host`` (as written in a URL) names this machine's loopback interface."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def rpc_url_problem(url: str, *, allow_plain_http: bool = False) -> str | None:
    """What is wrong with ``url`` as a chain endpoint, or None when it may be used."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parts.scheme not in ("http", "https") or not host:
        return "must be an http:// or https:// URL"
    if parts.scheme == "http" and not allow_plain_http and not is_loopback_host(host):
        return (
            "must be https:// unless the node is on this host's loopback (plain http:// "
            "lets anyone on the path answer for the chain); allow it explicitly to take it"
        )
    return None
