"""Outbound calls from the coordinator to agents' endpoints.

Every call has a timeout and returns a plain outcome instead of raising, so one
unreachable or misbehaving device can never stall a scheduling or spot-check round.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from typing import Any

import aiohttp

from .logs import REQUEST_ID_HEADER


@dataclass(frozen=True)
class Reply:
    status: int  # 0 when the device could not be reached
    body: Any
    error: str | None = None

    @property
    def code(self) -> str | None:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            code = self.body["error"].get("code")
            return code if isinstance(code, str) else None
        return None

    @property
    def reason(self) -> str:
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict):
            err = self.body["error"]
            return str(err.get("reason") or err.get("code") or "refused")
        return self.error or f"HTTP {self.status}"


class AgentClient:
    def __init__(self, *, timeout_s: float, ssl_context: ssl.SSLContext | None = None) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._ssl = ssl_context
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(ssl=self._ssl if self._ssl is not None else False)
        self._session = aiohttp.ClientSession(timeout=self._timeout, connector=connector)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def post(
        self, endpoint: str, path: str, message: dict[str, Any], *, request_id: str | None = None
    ) -> Reply:
        """POST ``message``; ``request_id`` (e.g. the task's) goes along as ``X-Request-ID``."""
        assert self._session is not None, "AgentClient.start() first"
        url = endpoint.rstrip("/") + path
        headers = {REQUEST_ID_HEADER: request_id} if request_id else None
        try:
            async with self._session.post(url, json=message, headers=headers) as resp:
                raw = await resp.read()
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = None
                return Reply(resp.status, body)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Reply(0, None, f"{type(exc).__name__}: {exc}".rstrip(": "))
