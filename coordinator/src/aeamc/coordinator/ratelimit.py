"""Per-address and per-device rate limits: token buckets answered with 429 + Retry-After.

A device is known by its TLS client certificate (parsed once per connection), so one
device cannot spend another's budget by signing messages with a different id, and many
devices behind one NAT address each keep their own budget on top of the address's. The
defaults leave a normal fleet far below the line (a device heartbeats every 30 s); the
host's own addresses are exempt, because the CLI, the dashboard and a demo network on
loopback live there. Buckets of idle keys are dropped, so memory stays bounded by the
number of recently active clients.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from aeamc.shared.runtime.tls import ROLE_DEVICE

from .config import LimitsConfig
from .errors import ApiError
from .forwarding import request_peer

#: Keep at most this many buckets per kind; beyond it the idlest are forgotten.
MAX_BUCKETS = 50_000


@dataclass
class _Bucket:
    tokens: float
    at: float


class TokenBuckets:
    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> float:
        """Take one token for ``key``: 0.0 if allowed, else the seconds until one is back."""
        now = self.clock()
        b = self._buckets.get(key)
        if b is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._forget_full(now)
            b = self._buckets[key] = _Bucket(self.burst, now)
        else:
            b.tokens = min(self.burst, b.tokens + (now - b.at) * self.rate)
            b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return 0.0
        return (1.0 - b.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        # A bucket refilled to its burst is the same as no bucket at all.
        full = [
            k for k, b in self._buckets.items() if b.tokens + (now - b.at) * self.rate >= self.burst
        ]
        for k in full:
            del self._buckets[k]
        if len(self._buckets) >= MAX_BUCKETS:
            oldest = sorted(self._buckets, key=lambda k: self._buckets[k].at)
            for k in oldest[: len(oldest) // 2]:
                del self._buckets[k]


class RateLimiter:
    def __init__(self, config: LimitsConfig, clock: Callable[[], float] = time.monotonic) -> None:
        self.exempt = frozenset(a.strip() for a in config.exempt.split(",") if a.strip())
        self.addresses = TokenBuckets(config.per_address_rate, config.per_address_burst, clock)
        self.devices = TokenBuckets(config.per_device_rate, config.per_device_burst, clock)

    def check(self, address: str | None, device_id: str | None) -> None:
        if address in self.exempt:
            return
        wait = self.addresses.take(address or "")
        if not wait and device_id is not None:
            wait = self.devices.take(device_id)
        if wait:
            raise ApiError(
                429,
                "rate_limited",
                "too many requests; slow down",
                retry_after_s=math.ceil(wait),
            )

    def refusal(self, request: web.Request) -> web.Response | None:
        """The 429 answer to ``request`` when its address or device is over its budget
        (``None`` when it may go on): decided before anything, its body included, is read."""
        address = request.remote
        if address in self.exempt:
            return None
        peer = request_peer(request)
        device_id = peer.name if peer is not None and peer.role == ROLE_DEVICE else None
        try:
            self.check(address, device_id)
        except ApiError as exc:
            resp = web.json_response(exc.body(), status=429)
            resp.headers["Retry-After"] = str(exc.body()["error"]["retry_after_s"])
            return resp
        return None
