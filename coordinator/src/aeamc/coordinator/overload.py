"""Admission of device requests: past capacity, a quick 503 instead of a long queue.

A coordinator that takes every request it is sent holds them all once it falls behind:
each waits its turn for the event loop, the signature threads and the database writer,
answers come back seconds late, agents time out and send again, and the backlog grows.
``Admission`` guards the hot device routes (heartbeats and proofs) of this process with
two signals, and answers a request it sheds at once, before its body is read, with 503
``overloaded`` and a ``Retry-After`` (whole seconds) that agents wait out, with jitter of
their own, before they come back:

- the requests in flight: past ``max_inflight``, every new one is shed;
- how late the event loop runs what is due (``LoopLag``). Most of a saturated process's
  queue is not in its handlers but in its sockets, read one by one as the loop gets to
  them, where no count of requests in flight sees it; the loop's lateness does. Past
  ``max_lag_s`` a share of new requests is shed that grows with the excess (all of them
  at twice the bound), so the load steps down as far as it must, not all at once.

Nothing of a shed request is stored, so it is as if it had never been sent, and its
sender sends it again.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

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


class LoopLag:
    """How late the running event loop wakes a task that sleeps ``interval_s``: the
    time every ready callback ahead of it took, i.e. the wait of whatever is queued.

    ``lag_s`` is smoothed (a third of each new sample), so one slow callback (a garbage
    collection, a large answer) moves it a little and a backlog moves it quickly."""

    #: Weight of the newest sample in ``lag_s``.
    SMOOTHING = 1 / 3

    def __init__(
        self, interval_s: float = 0.05, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.lag_s = 0.0

    def sample(self, late_s: float) -> None:
        """Take in one measured lateness (negative counts as none)."""
        self.lag_s += self.SMOOTHING * (max(0.0, late_s) - self.lag_s)

    async def run(self) -> None:
        """Measure until cancelled."""
        while True:
            due = self.clock() + self.interval_s
            await asyncio.sleep(self.interval_s)
            self.sample(self.clock() - due)


class Admission:
    """Whether one more device request may be handled now (see the module's text).

    ``max_inflight`` 0 turns the bound on requests in flight off; ``max_lag_s`` 0 (or no
    ``lag``) turns off shedding on the event loop's lateness."""

    def __init__(
        self,
        max_inflight: int,
        retry_after_s: int,
        *,
        max_lag_s: float = 0.0,
        lag: LoopLag | None = None,
        uniform: Callable[[], float] = random.random,
    ) -> None:
        self.max_inflight = max_inflight
        self.retry_after_s = retry_after_s
        self.max_lag_s = max_lag_s
        self.lag = lag
        self._uniform = uniform
        self.inflight = 0
        #: Requests answered 503 ``overloaded``, by route.
        self.shed: Counter[str] = Counter()

    def shed_share(self) -> float:
        """The share of new requests the loop's lateness sheds now: 0 up to ``max_lag_s``,
        rising linearly to 1 at twice it."""
        if self.lag is None or not self.max_lag_s or self.lag.lag_s <= self.max_lag_s:
            return 0.0
        return min(1.0, (self.lag.lag_s - self.max_lag_s) / self.max_lag_s)

    def admit(self, route: str) -> bool:
        """Count one more request in flight on ``route``; ``False`` (and counted as shed)
        when the bound is reached or the loop's lateness sheds it. Every admitted request
        is ``release``d once."""
        full = self.max_inflight and self.inflight >= self.max_inflight
        share = self.shed_share()
        if full or (share and self._uniform() < share):
            self.shed[route] += 1
            return False
        self.inflight += 1
        return True

    async def watching(self, _app: web.Application) -> AsyncIterator[None]:
        """An aiohttp cleanup context: the loop's lateness is measured while the app runs."""
        if self.lag is None or not self.max_lag_s:
            yield
            return
        task = asyncio.get_running_loop().create_task(self.lag.run())
        try:
            yield
        finally:
            task.cancel()

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
