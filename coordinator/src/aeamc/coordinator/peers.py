"""Outbound calls from the coordinator to agents' endpoints.

Every call has a timeout and returns a plain outcome instead of raising, so one
unreachable or misbehaving device can never stall a scheduling or spot-check round.

Calls are TLS 1.3 with the coordinator's certificate as the client certificate, and the
agent must present the certificate of the device the message is addressed to: it is
verified against our CA under ``<device_id>.device.aeamc``, whatever address the
endpoint has (``aeamc.shared.runtime.tls``).
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from aeamc.shared.envelope import decode_reply, error_code, error_of
from aeamc.shared.runtime.tls import device_hostname

from .logs import REQUEST_ID_HEADER


@dataclass(frozen=True)
class Reply:
    status: int  # 0 when the device could not be reached
    body: Any
    error: str | None = None

    @property
    def code(self) -> str | None:
        """``error.code`` of a SPEC §9 error body, if there is one."""
        return error_code(self.body)

    @property
    def reason(self) -> str:
        """Why the device refused: its ``reason``, else its code, else what went wrong."""
        err = error_of(self.body)
        if err is not None:
            return str(err.get("reason") or err.get("code") or "refused")
        return self.error or f"HTTP {self.status}"


#: Most bytes read from a device's answer unless a call says otherwise.
DEFAULT_MAX_REPLY_BYTES = 1 << 20


async def _read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or ``None`` as soon as it is known to exceed ``limit`` bytes."""
    if resp.content_length is not None and resp.content_length > limit:
        return None
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


class DeviceLink(Protocol):
    """How the scheduling and spot-check loops reach a device's endpoint.

    ``AgentClient`` is the one the coordinator runs with; the loops depend only on this
    contract: an outcome for every call, never an exception, with status 0 when the device
    could not be reached, answered after ``timeout_s`` or with more than ``max_bytes``.
    """

    async def post(
        self,
        endpoint: str,
        path: str,
        message: dict[str, Any],
        *,
        request_id: str | None = None,
        timeout_s: float | None = None,
        max_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> Reply: ...


class AgentClient:
    """The ``DeviceLink`` over mutual TLS, one HTTP session for every device."""

    def __init__(self, *, timeout_s: float, ssl_context: ssl.SSLContext) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self._ssl)
        self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(
        self,
        endpoint: str,
        path: str,
        message: dict[str, Any],
        *,
        request_id: str | None = None,
        timeout_s: float | None = None,
        max_bytes: int = DEFAULT_MAX_REPLY_BYTES,
    ) -> Reply:
        """POST ``message``; ``request_id`` (e.g. the task's) goes along as ``X-Request-ID``.

        The whole exchange ends within ``timeout_s`` (default: the client's), and at most
        ``max_bytes`` of the answer are read: a device that answers late, slowly or with an
        endless body gets a ``Reply`` with status 0, never a stalled round."""
        assert self._session is not None, "AgentClient.start() first"
        url = endpoint.rstrip("/") + path
        headers = {REQUEST_ID_HEADER: request_id} if request_id else None
        device_id = message.get("device_id")
        if not url.startswith("https://") or not isinstance(device_id, str):
            return Reply(0, None, "the device's endpoint is not an https:// URL")
        try:
            timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s else None
            async with self._session.post(
                url,
                json=message,
                headers=headers,
                server_hostname=device_hostname(device_id),
                timeout=timeout,
            ) as resp:
                raw = await _read_at_most(resp, max_bytes)
                if raw is None:
                    return Reply(0, None, f"answer larger than {max_bytes} bytes")
                return Reply(resp.status, decode_reply(raw))
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Reply(0, None, f"{type(exc).__name__}: {exc}".rstrip(": "))
