"""Requests to the coordinator, with their round-trip time.

Every answer is a ``Reply`` (status, JSON body, round trip in µs); anything that is not an
HTTP answer (refused connection, timeout, reset) is ``Unreachable``. The round trip of
each request is the device's latency measurement (SPEC §2 ``net_latency_us``): a real
exchange with the coordinator, not a ping to somewhere else.

Every request is TLS 1.3: with ``tls`` (the agent's ``AgentTls``) it verifies the pinned
CA under the coordinator's name and presents the device's certificate; a coordinator
whose certificate does not verify is ``Unreachable`` (and logged as such).

Answers are parsed strictly (``aeamc.shared.strictjson``). An answer whose JSON has a
member twice, or NaN or Infinity, is ``AmbiguousAnswer``, an ``Unreachable``: no caller
acts on a body that another parser would read differently, and each retries as after
no answer. A body that is not JSON at all is ``None`` and the status says what happened
(a proxy's error page, an empty 204).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from aeamc.shared.envelope import error_code, error_of
from aeamc.shared.runtime.clock import now_ms
from aeamc.shared.runtime.logs import REQUEST_ID_HEADER
from aeamc.shared.strictjson import AmbiguousJson, JsonError, loads_strict

from .net import RequestAttempt

if TYPE_CHECKING:
    from .tls import AgentTls


class Unreachable(Exception):
    """No HTTP answer from the coordinator."""


class CertificateRefused(Unreachable):
    """The coordinator's TLS certificate is not from the pinned CA (or not for its id)."""


class AmbiguousAnswer(Unreachable):
    """An answer whose JSON has a member twice, or NaN or Infinity: taken as none."""


def answer_body(url: str, raw: bytes) -> Any:
    """An answer's body as strict JSON; ``None`` when it is empty or not JSON at all.
    Raises ``AmbiguousAnswer`` for JSON that a lax parser would take and read one way."""
    if not raw:
        return None
    try:
        return loads_strict(raw)
    except AmbiguousJson as exc:
        raise AmbiguousAnswer(f"{url}: answer refused: {exc.message}") from None
    except JsonError:
        return None


#: The longest ``Retry-After`` taken at its word; a longer one counts as none.
MAX_RETRY_AFTER_S = 3600


def retry_after_header(value: str | None) -> int | None:
    """``Retry-After`` in delta-seconds (what the coordinator sends); an HTTP-date or
    anything else is ``None``."""
    if value is None:
        return None
    value = value.strip()
    if not value.isascii() or not value.isdigit() or len(value) > 9:
        return None
    return int(value)


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any
    rtt_us: int
    #: The answer's ``Retry-After`` header in seconds, when it has one (delta-seconds).
    retry_after_header: int | None = None

    @property
    def retry_after_s(self) -> int | None:
        """How long the coordinator asks to be left alone (a 429 or 503): the longer of
        the ``Retry-After`` header and the error body's ``retry_after_s``; ``None`` when
        neither says, or says nonsense."""
        hints = [self.retry_after_header, self.error.get("retry_after_s")]
        waits = [
            w
            for w in hints
            if isinstance(w, int) and not isinstance(w, bool) and 0 < w <= MAX_RETRY_AFTER_S
        ]
        return max(waits) if waits else None

    @property
    def error_code(self) -> str | None:
        """``error.code`` of a SPEC §9 error body, if there is one."""
        return error_code(self.body)

    @property
    def error_message(self) -> str:
        return str(self.error.get("message", ""))

    @property
    def error(self) -> dict[str, Any]:
        """The error body's members (empty when the answer is not an error body)."""
        return error_of(self.body) or {}


class CoordinatorClient:
    def __init__(self, session: aiohttp.ClientSession, *, tls: AgentTls | None = None) -> None:
        self.session = session
        self.tls = tls
        self.last_rtt_us: int | None = None

    async def post(
        self, base_url: str, path: str, payload: Any, *, request_id: str | None = None
    ) -> Reply:
        return await self.send("POST", base_url, path, payload, request_id=request_id)

    async def send(
        self,
        method: str,
        base_url: str,
        path: str,
        payload: Any,
        *,
        request_id: str | None = None,
    ) -> Reply:
        """``request_id`` goes along as ``X-Request-ID`` (a task's proof carries its id)."""
        url = base_url.rstrip("/") + path
        headers = {"Content-Type": "application/json"}
        if request_id:
            headers[REQUEST_ID_HEADER] = request_id
        data = None if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        options = self.tls.request_options(now_ms()) if self.tls else {}
        for last_try in (False, True):
            attempt = RequestAttempt()
            started = time.perf_counter_ns()
            try:
                async with self.session.request(
                    method, url, data=data, headers=headers, trace_request_ctx=attempt, **options
                ) as resp:
                    raw = await resp.read()
                    status = resp.status
                    retry_after = retry_after_header(resp.headers.get("Retry-After"))
                break
            except aiohttp.ClientConnectorCertificateError as exc:
                raise CertificateRefused(f"{url}: {exc.certificate_error}") from None
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                # A kept-alive connection the server closed as the request went out (its
                # idle timer, a restart): no answer came, and a server closes an idle
                # connection without reading from it, so the request goes again at once on
                # a new connection (RFC 9112 §9.3.1) — not the coordinator being away. A
                # heartbeat replayed after all would be refused as such (409 `replay`).
                if attempt.reused and not last_try:
                    continue
                raise Unreachable(f"{url}: {exc.__class__.__name__}: {exc}") from None
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                raise Unreachable(f"{url}: {exc.__class__.__name__}: {exc}") from None
        rtt_us = (time.perf_counter_ns() - started) // 1000
        self.last_rtt_us = rtt_us
        return Reply(status, answer_body(url, raw), rtt_us, retry_after)

    async def fetch(self, url: str, max_bytes: int) -> tuple[int, bytes]:
        """GET ``url`` (update metadata and files); at most ``max_bytes`` of the body."""
        options = self.tls.request_options(now_ms()) if self.tls else {}
        try:
            async with self.session.get(url, **options) as resp:
                chunks, size = [], 0
                async for chunk in resp.content.iter_chunked(1 << 16):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > max_bytes:  # the caller's length check refuses it
                        break
                return resp.status, b"".join(chunks)
        except aiohttp.ClientConnectorCertificateError as exc:
            raise CertificateRefused(f"{url}: {exc.certificate_error}") from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise Unreachable(f"{url}: {exc.__class__.__name__}: {exc}") from None
