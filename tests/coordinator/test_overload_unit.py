"""Admission's two signals, alone: the requests in flight and the event loop's lateness."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from aeamc.coordinator.overload import Admission, LoopLag, StandingDelay

ROUTE = "/v1/heartbeats"


def lagging(lag_s: float) -> LoopLag:
    lag = LoopLag()
    lag.lag_s = lag_s
    return lag


@pytest.mark.parametrize(
    ("lag_s", "share"),
    [(0.0, 0.0), (0.1, 0.0), (0.125, 0.25), (0.15, 0.5), (0.2, 1.0), (3.0, 1.0)],
)
def test_the_share_shed_grows_with_the_lateness_past_the_bound(lag_s: float, share: float) -> None:
    admission = Admission(0, 5, max_delay_s=0.1, lag=lagging(lag_s))
    assert admission.shed_share() == pytest.approx(share)


def test_a_request_is_shed_when_the_draw_falls_in_the_share() -> None:
    draws = iter([0.49, 0.51])
    admission = Admission(0, 5, max_delay_s=0.1, lag=lagging(0.15), uniform=lambda: next(draws))
    assert admission.admit(ROUTE) is False
    assert admission.admit(ROUTE) is True
    assert (admission.inflight, admission.shed[ROUTE]) == (1, 1)


def test_lateness_is_ignored_when_off() -> None:
    """``max_delay_s`` 0, or no measure: only the bound on requests in flight sheds."""
    for admission in (
        Admission(1, 5, max_delay_s=0.0, lag=lagging(10.0)),
        Admission(1, 5, max_delay_s=0.1, lag=None),
    ):
        assert admission.shed_share() == 0.0
        assert admission.admit(ROUTE) is True
        assert admission.admit(ROUTE) is False  # the bound of one in flight
        admission.release(ROUTE, 0.001)
        assert admission.admit(ROUTE) is True
        assert admission.shed[ROUTE] == 1


def test_smoothing_takes_a_third_of_each_sample_and_ignores_early_wakeups() -> None:
    lag = LoopLag()
    lag.sample(0.3)
    assert lag.lag_s == pytest.approx(0.1)
    lag.sample(-0.01)  # woken early (clock granularity): no lateness
    assert lag.lag_s == pytest.approx(0.1 * 2 / 3)


async def _until(predicate: Callable[[], bool], rounds: int = 200) -> bool:
    for _ in range(rounds):
        if predicate():
            return True
        await asyncio.sleep(0.005)
    return predicate()


async def test_a_blocked_loop_is_measured_late() -> None:
    """A callback that holds the loop 0.3 s makes the monitor's next wakeup at least that
    much late (a third of it in the smoothed lateness); the loop then on time, it decays."""
    lag = LoopLag(interval_s=0.01)
    task = asyncio.get_running_loop().create_task(lag.run())
    try:
        await asyncio.sleep(0.05)
        time.sleep(0.3)  # the point: the loop is held
        assert await _until(lambda: lag.lag_s >= 0.29 / 3 - 0.01)
        assert await _until(lambda: lag.lag_s < 0.01)
    finally:
        task.cancel()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_standing_delay_is_the_quickest_heartbeat_of_the_last_full_interval() -> None:
    clock = Clock()
    standing = StandingDelay(clock)
    for seconds in (0.4, 0.25, 0.9, *[0.3] * 5):  # all slow: a queue all of them waited in
        standing.observe(seconds)
    assert standing.delay_s == 0.0  # the interval is not over yet
    clock.now += StandingDelay.INTERVAL_S + 0.001
    assert standing.delay_s == pytest.approx(0.25)
    # A burst: one slow heartbeat among quick ones is no standing queue.
    for seconds in (0.9, 0.002, *[0.5] * 6):
        standing.observe(seconds)
    clock.now += StandingDelay.INTERVAL_S + 0.001
    assert standing.delay_s == pytest.approx(0.002)
    # A few heartbeats, however slow (a slow disk's commit), say nothing.
    for seconds in [0.4] * (StandingDelay.MIN_HEARTBEATS - 1):
        standing.observe(seconds)
    clock.now += StandingDelay.INTERVAL_S + 0.001
    assert standing.delay_s == pytest.approx(0.002)  # the last interval that said something
    # With no heartbeat since, the last figure stops counting.
    clock.now += StandingDelay.STALE_S + StandingDelay.INTERVAL_S
    assert standing.delay_s == 0.0


def test_the_larger_delay_counts_and_only_heartbeats_are_measured() -> None:
    clock = Clock()
    standing = StandingDelay(clock)
    admission = Admission(
        0, 5, max_delay_s=0.1, lag=lagging(0.02), standing=standing, uniform=lambda: 0.99
    )
    for _ in range(StandingDelay.MIN_HEARTBEATS):
        assert admission.admit("/v1/proofs/batch")
        admission.release("/v1/proofs/batch", 5.0)  # a big batch: its own work, not a queue
    clock.now += StandingDelay.INTERVAL_S + 0.001
    assert admission.delay_s() == pytest.approx(0.02)
    for _ in range(StandingDelay.MIN_HEARTBEATS):
        assert admission.admit(ROUTE)
        admission.release(ROUTE, 0.3)
    clock.now += StandingDelay.INTERVAL_S + 0.001
    assert admission.delay_s() == pytest.approx(0.3)
    assert admission.shed_share() == 1.0
    assert admission.admit("/v1/proofs") is False  # every device route is shed
    assert admission.shed["/v1/proofs"] == 1
