"""Admission of device requests: past capacity, a quick 503 instead of a long queue.

A coordinator that takes every request it is sent holds them all once it falls behind:
each waits its turn for the event loop, the signature threads and the database writer,
answers come back seconds late, agents time out and send again, and the backlog grows.
``Admission`` guards the hot device routes (heartbeats and proofs) of this process with
two bounds, and answers a request it sheds at once, before its body is read, with 503
``overloaded`` and a ``Retry-After`` (whole seconds) that agents wait out, with jitter of
their own, before they come back:

- the requests in flight: past ``max_inflight``, every new one is shed;
- how long requests wait in this process, ``max_delay_s``, measured two ways, the larger
  counting:

  - how late the event loop runs what is due (``LoopLag``). Most of a saturated
    process's queue is not in its handlers but in its sockets, read one by one as the
    loop gets to them, where no count of requests in flight sees it;
  - the shortest time a heartbeat took to be handled over the last 100 ms
    (``StandingDelay``, CoDel's signal). A heartbeat's own work takes a few ms; when even
    the quickest one took longer than the bound, every one waited behind others — for
    the database, the signature thread — not a burst that drains by itself.

  Past the bound a share of new requests is shed that grows with the excess (all of them
  at twice the bound), so the load steps down as far as it must, not all at once.

Nothing of a shed request is stored, so it is as if it had never been sent, and its
sender sends it again.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from .errors import retry_later

#: (method, route) of the requests admission counts: what every device sends, often.
DEVICE_ROUTES = frozenset(
    {
        ("POST", "/v1/heartbeats"),
        ("POST", "/v1/proofs"),
        ("POST", "/v1/proofs/batch"),
    }
)
OVERLOADED = "overloaded"
#: The route whose handling times measure the standing delay: the most frequent, and
#: the same small work each time.
HEARTBEATS = "/v1/heartbeats"


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


class StandingDelay:
    """The shortest handling time of the heartbeats of the last full ``INTERVAL_S``: the
    delay every one of them met, which a burst does not cause and a standing queue does.
    It counts for ``STALE_S`` after that interval; with no heartbeat since, it is 0.

    An interval with fewer than ``MIN_HEARTBEATS`` heartbeats says nothing: at that rate
    there is no queue to speak of, and a heartbeat's time is its own work and its commit
    (on slow storage, an fsync of tens of ms), which shedding would not shorten."""

    INTERVAL_S = 0.1
    STALE_S = 1.0
    MIN_HEARTBEATS = 8

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._start = clock()
        self._least = math.inf  # of the interval under way
        self._count = 0  # heartbeats of the interval under way
        self._last = 0.0  # of the last full interval with enough heartbeats in it
        self._last_end = -math.inf

    def observe(self, seconds: float) -> None:
        """One heartbeat was handled in ``seconds``."""
        self._roll(self.clock())
        self._least = min(self._least, seconds)
        self._count += 1

    def _roll(self, now: float) -> None:
        if now - self._start >= self.INTERVAL_S:
            if self._count >= self.MIN_HEARTBEATS:
                self._last, self._last_end = self._least, self._start + self.INTERVAL_S
            self._start, self._least, self._count = now, math.inf, 0

    @property
    def delay_s(self) -> float:
        now = self.clock()
        self._roll(now)
        return self._last if now - self._last_end <= self.STALE_S else 0.0


class Admission:
    """Whether one more device request may be handled now (see the module's text).

    ``max_inflight`` 0 turns the bound on requests in flight off; ``max_delay_s`` 0 turns
    off shedding on the delay (``lag``: the loop's lateness, ``standing``: the heartbeats'
    standing delay; either may be left out)."""

    def __init__(
        self,
        max_inflight: int,
        retry_after_s: int,
        *,
        max_delay_s: float = 0.0,
        lag: LoopLag | None = None,
        standing: StandingDelay | None = None,
        uniform: Callable[[], float] = random.random,
    ) -> None:
        self.max_inflight = max_inflight
        self.retry_after_s = retry_after_s
        self.max_delay_s = max_delay_s
        self.lag = lag
        self.standing = standing
        self._uniform = uniform
        self.inflight = 0
        #: Requests answered 503 ``overloaded``, by route.
        self.shed: Counter[str] = Counter()

    def delay_s(self) -> float:
        """How long requests wait in this process now: the larger of the two measures."""
        lag = self.lag.lag_s if self.lag is not None else 0.0
        standing = self.standing.delay_s if self.standing is not None else 0.0
        return max(lag, standing)

    def shed_share(self) -> float:
        """The share of new requests the delay sheds now: 0 up to ``max_delay_s``, rising
        linearly to 1 at twice it."""
        if not self.max_delay_s:
            return 0.0
        delay = self.delay_s()
        if delay <= self.max_delay_s:
            return 0.0
        return min(1.0, (delay - self.max_delay_s) / self.max_delay_s)

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
        if self.lag is None or not self.max_delay_s:
            yield
            return
        task = asyncio.get_running_loop().create_task(self.lag.run())
        try:
            yield
        finally:
            task.cancel()

    def release(self, route: str, seconds: float) -> None:
        """An admitted request on ``route`` was answered after ``seconds``."""
        self.inflight -= 1
        if route == HEARTBEATS and self.standing is not None:
            self.standing.observe(seconds)

    def refusal(self) -> web.Response:
        """The answer to a shed request: the API's error body, and ``Retry-After``."""
        return retry_later(
            OVERLOADED,
            "the coordinator is at capacity; retry after the time given",
            self.retry_after_s,
        )
