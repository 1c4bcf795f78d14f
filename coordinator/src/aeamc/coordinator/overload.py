"""Admission of device requests: past capacity, a quick 503 instead of a long queue.

A coordinator that takes every request it is sent holds them all once it falls behind:
each waits its turn for the event loop, the signature threads and the database writer,
answers come back seconds late, agents time out and send again, and the backlog grows.
``Admission`` bounds the requests on the hot device routes (heartbeats and proofs) in
flight in this process: one past the bound is answered at once, before its body is read,
with 503 ``overloaded`` and a ``Retry-After`` (whole seconds) that agents wait out, with
jitter of their own, before they come back. Nothing of a shed request is stored, so it
is as if it had never been sent, and its sender sends it again.
"""

from __future__ import annotations

from collections import Counter

from aiohttp import web

from .errors import ApiError

#: (method, route) of the requests admission counts: what every device sends, often.
DEVICE_ROUTES = frozenset(
    {
        ("POST", "/v1/heartbeats"),
        ("POST", "/v1/proofs"),
        ("POST", "/v1/proofs/batch"),
    }
)
OVERLOADED = "overloaded"


class Admission:
    """How many device requests are in flight, and whether one more may be.

    ``max_inflight`` 0 admits everything (the bound is off)."""

    def __init__(self, max_inflight: int, retry_after_s: int) -> None:
        self.max_inflight = max_inflight
        self.retry_after_s = retry_after_s
        self.inflight = 0
        #: Requests answered 503 ``overloaded``, by route.
        self.shed: Counter[str] = Counter()

    def admit(self, route: str) -> bool:
        """Count one more request in flight on ``route``; ``False`` (and counted as shed)
        when the bound is reached. Every admitted request is ``release``d once."""
        if self.max_inflight and self.inflight >= self.max_inflight:
            self.shed[route] += 1
            return False
        self.inflight += 1
        return True

    def release(self) -> None:
        self.inflight -= 1

    def refusal(self) -> web.Response:
        """The answer to a shed request: the API's error body, and ``Retry-After``."""
        wait = self.retry_after_s
        err = ApiError(
            503,
            OVERLOADED,
            "the coordinator is at capacity; retry after the time given",
            retry_after_s=wait,
        )
        return web.json_response(err.body(), status=503, headers={"Retry-After": str(wait)})
