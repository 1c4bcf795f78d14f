"""A TCP relay on loopback that can fall silent: a network that stops carrying packets
without closing anything, as a pulled cable does, for tests that need one on a single
host (the real cable is pulled in ``tests/e2e/test_host_dark.py``).

While :meth:`SilentRelay.silence` is on, bytes already sent wait in the relay and nothing
is delivered either way; the connections stay open. :meth:`speak` delivers what waited,
in order, as a network that comes back does.
"""

from __future__ import annotations

import selectors
import socket
import threading


class SilentRelay:
    """Relays ``127.0.0.1:<port>`` to ``target`` (host, port) until :meth:`close`."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._quiet = threading.Event()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._start(self._accept)

    def silence(self) -> None:
        self._quiet.set()

    def speak(self) -> None:
        self._quiet.clear()

    def close(self) -> None:
        self._closed.set()
        self._listener.close()
        for thread in self._threads:
            thread.join(timeout=5)

    def _start(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._start(self._pipe, client, server)

    def _pipe(self, a: socket.socket, b: socket.socket) -> None:
        peer = {a: b, b: a}
        waiting: dict[socket.socket, bytearray] = {a: bytearray(), b: bytearray()}
        with selectors.DefaultSelector() as sel:
            sel.register(a, selectors.EVENT_READ)
            sel.register(b, selectors.EVENT_READ)
            while not self._closed.is_set():
                for key, _ in sel.select(timeout=0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    data = sock.recv(65536)
                    if not data:
                        a.close()
                        b.close()
                        return
                    waiting[peer[sock]] += data
                if self._quiet.is_set():
                    continue
                for sock, data in waiting.items():
                    if data:
                        sock.sendall(data)
                        data.clear()
        a.close()
        b.close()


def relayed(url: str) -> tuple[SilentRelay, str]:
    """A relay to the server of the PostgreSQL ``url`` and the same URL through it."""
    address = url.split("@", 1)[1].split("/", 1)[0]
    host, port = address.rsplit(":", 1)
    relay = SilentRelay((host, int(port)))
    return relay, url.replace(address, f"127.0.0.1:{relay.port}", 1)
