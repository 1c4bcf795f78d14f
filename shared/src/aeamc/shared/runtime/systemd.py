"""sd_notify(3) without libsystemd: how a daemon tells systemd it is ready or stopping.

Both daemons run as ``Type=notify`` units: they send ``READY=1`` once they serve, and the
agent ``STOPPING=1`` as it begins to shut down. Outside systemd (no ``$NOTIFY_SOCKET``)
nothing is sent, and a socket that went away is not an error worth stopping for.
"""

from __future__ import annotations

import contextlib
import os
import socket


def notify(state: str) -> None:
    """Send ``state`` (e.g. ``"READY=1"``) as one datagram to ``$NOTIFY_SOCKET``, if set."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.sendto(state.encode(), address)
