"""Keep-alive HTTPS client that records every exchange, and a read-only database snapshot.

It speaks TLS 1.3 with the enrolled device's client certificate, so device routes get
past the certificate check and every forged or malformed message reaches the checks
behind it."""

from __future__ import annotations

import contextlib
import http.client
import json
import sqlite3
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Methods whose 2xx answer means the fuzz had something accepted.
MUTATING = {"POST", "PUT", "DELETE", "PATCH"}
#: Routes that answer 2xx to anything and hold no state in the database: logging out a
#: browser that has no session cookie.
ALWAYS_2XX = {"/dashboard/logout"}


@dataclass
class Exchange:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    reply: bytes

    def describe(self) -> str:
        body = (
            self.body
            if len(self.body) <= 300
            else self.body[:300] + b"...(%d bytes)" % len(self.body)
        )
        path = self.path if len(self.path) <= 200 else f"{self.path[:200]}...({len(self.path)})"
        headers = {
            k: v if len(v) <= 200 else f"{v[:200]}...({len(v)})" for k, v in self.headers.items()
        }
        return (
            f"{self.method} {path!r} headers={headers} body={body!r} "
            f"-> {self.status} {self.reply[:300]!r}"
        )


@dataclass
class Fuzzer:
    """Sends requests over one persistent connection and checks each answer's shape."""

    host: str
    port: int
    ssl_context: ssl.SSLContext
    sent: int = 0
    server_errors: list[Exchange] = field(default_factory=list)
    bad_shape: list[Exchange] = field(default_factory=list)
    accepted: list[Exchange] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    reported: list[str] = field(default_factory=list)
    _conn: http.client.HTTPSConnection | None = None

    def _connection(self) -> http.client.HTTPSConnection:
        if self._conn is None:
            self._conn = http.client.HTTPSConnection(
                self.host, self.port, timeout=60, context=self.ssl_context
            )
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def send(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        *,
        headers: dict[str, str] | None = None,
        content_type: str | None = "application/json",
        token: str | None = None,
        allow_2xx: bool = False,
    ) -> Exchange:
        hdrs = dict(headers or {})
        if body is not None and content_type is not None:
            hdrs.setdefault("Content-Type", content_type)
        if token is not None:
            hdrs.setdefault("Authorization", f"Bearer {token}")
        data = b"" if body is None else body
        status, reply, close = self._roundtrip(method, path, body, hdrs)
        ex = Exchange(method, path, hdrs, data, status, reply)
        self.sent += 1
        if close:
            self.close()
        if status == 0:
            self.dropped.append(ex.describe())
        elif status >= 500:
            self.server_errors.append(ex)
        elif status >= 400:
            if not _is_error_body(reply):
                self.bad_shape.append(ex)
        elif method in MUTATING and not allow_2xx and path not in ALWAYS_2XX:
            self.accepted.append(ex)
        return ex

    def _roundtrip(
        self, method: str, path: str, body: bytes | None, hdrs: dict[str, str]
    ) -> tuple[int, bytes, bool]:
        for attempt in range(2):
            conn = self._connection()
            try:
                conn.putrequest(method, path, skip_accept_encoding=True)
                for k, v in hdrs.items():
                    conn.putheader(k, v)
                if body is not None:
                    conn.putheader("Content-Length", str(len(body)))
                conn.endheaders()
                if body:
                    # The server may answer before reading everything (e.g. 413): read it.
                    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                        conn.send(body)
                resp = conn.getresponse()
                reply = resp.read()
                return resp.status, reply, resp.will_close
            except (http.client.HTTPException, ConnectionError, OSError):
                self.close()
                if attempt:
                    return 0, b"", True
        return 0, b"", True

    def take_failures(self) -> list[str]:
        """The failures since the last call, kept for the final total."""
        out = self.failures()
        self.reported += out
        self.server_errors, self.bad_shape, self.accepted, self.dropped = [], [], [], []
        return out

    def failures(self) -> list[str]:
        out: list[str] = [f"5xx: {e.describe()}" for e in self.server_errors]
        out += [
            f"error body not {{'error': {{code, message}}}}: {e.describe()}" for e in self.bad_shape
        ]
        out += [f"rejected input was accepted: {e.describe()}" for e in self.accepted]
        out += [f"no answer: {d}" for d in self.dropped]
        return out


def _is_error_body(reply: bytes) -> bool:
    try:
        body = json.loads(reply)
    except ValueError:
        return False
    err = body.get("error") if isinstance(body, dict) else None
    return (
        isinstance(err, dict)
        and isinstance(err.get("code"), str)
        and isinstance(err.get("message"), str)
    )


def snapshot(db_path: Path) -> dict[str, Any]:
    """Every table's rows, sorted, plus the schema version: opened read-only."""
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        out: dict[str, Any] = {"user_version": conn.execute("PRAGMA user_version").fetchone()[0]}
        tables = [
            r[0]
            for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        ]
        for t in tables:
            rows = conn.execute(f'SELECT * FROM "{t}"').fetchall()  # names from sqlite_master
            out[t] = sorted(rows, key=repr)
        return out
    finally:
        conn.close()
