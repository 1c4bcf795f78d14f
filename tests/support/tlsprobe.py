"""Probes of a listener's TLS: what a TLS 1.2 client, a plaintext client and a TLS 1.3
client get (SPEC §12: every listener speaks TLS 1.3 only)."""

from __future__ import annotations

import socket
import ssl

import pytest


def _tls12_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def assert_tls13_only(port: int, paths: tuple[str, ...], tls13: ssl.SSLContext) -> None:
    """A TLS 1.2 handshake fails, plaintext HTTP gets no HTTP answer, TLS 1.3 works."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        pytest.raises(ssl.SSLError),
    ):
        _tls12_context().wrap_socket(raw)
    for path in paths:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            reply = b""
            try:
                while chunk := raw.recv(65536):
                    reply += chunk
            except ConnectionResetError:
                pass
        assert not reply.startswith(b"HTTP/"), (path, reply[:200])
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            tls13.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
        ):
            assert conn.version() == "TLSv1.3"
            conn.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            assert conn.recv(64).startswith(b"HTTP/1.1 200"), path
