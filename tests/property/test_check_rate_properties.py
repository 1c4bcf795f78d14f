"""The new-device check rate derived from an assurance target (shared/reputation.py): it
meets the target exactly — no smaller rate would — for every task size, k and target; it
holds for a device's first tasks whatever ``trust_after`` is; it costs less than checking
every task until ``trust_after`` passes; it falls back to every task when nothing less
will do; and the real challenge derivation catches at the rate the formula predicts."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aeamc.coordinator.config import SpotCheckConfig
from aeamc.shared import reputation, spotcheck
from aeamc.shared.reputation import Assurance
from tests.support.passes import over_passes

targets = st.builds(
    Assurance,
    fraction=st.floats(0.01, 1.0),
    within_tasks=st.integers(1, 100),
    probability=st.floats(0.05, 0.999),
)


def _exact_catch(
    rate: float, q: float, tasks: int, *, trust_after: int, floor: float, hold_until: int
) -> float:
    """P(caught within ``tasks``) under the full rule, by dynamic programming over passes."""

    def rate_of_passes(passes: int) -> float:
        return reputation.check_probability(
            passes, trust_after=trust_after, floor=floor, new_rate=rate, hold_until=hold_until
        )

    return over_passes(tasks, rate_of_passes, q)[1]


def _expected_checks(tasks: int, rate_of_passes: Callable[[int], float]) -> float:
    return over_passes(tasks, rate_of_passes)[0]


@settings(max_examples=300, deadline=None)
@given(target=targets, k=st.integers(1, 16), chunks=st.integers(1, 200))
def test_rate_meets_the_target_and_nothing_smaller_does(
    target: Assurance, k: int, chunks: int
) -> None:
    rate = reputation.assurance_rate(target, k=k, chunks=chunks)
    q = 1 - (1 - target.fraction) ** min(k, chunks)
    assert 0 < rate <= 1
    reachable = reputation.catch_within(1.0, q, target.within_tasks) >= target.probability
    if not reachable:
        assert rate == 1.0  # the best there is: every task
        return
    assert reputation.catch_within(rate, q, target.within_tasks) >= target.probability
    smaller = rate * (1 - 1e-9)
    assert reputation.catch_within(smaller, q, target.within_tasks) < target.probability


@settings(max_examples=60, deadline=None)
@given(
    target=st.builds(
        Assurance,
        fraction=st.floats(0.02, 0.5),
        within_tasks=st.integers(1, 30),
        probability=st.floats(0.5, 0.999),
    ),
    k=st.integers(1, 8),
    chunks=st.integers(1, 80),
    trust_after=st.integers(1, 40),
    floor=st.floats(0.0, 0.3),
)
def test_assurance_holds_under_the_full_rule_whatever_trust_after(
    target: Assurance, k: int, chunks: int, trust_after: int, floor: float
) -> None:
    rate = reputation.assurance_rate(target, k=k, chunks=chunks)
    q = reputation.catch_per_check(target.fraction, k, chunks)
    exact = _exact_catch(
        rate,
        q,
        target.within_tasks,
        trust_after=trust_after,
        floor=floor,
        hold_until=target.within_tasks,
    )
    closed = reputation.catch_within(max(floor, rate), q, target.within_tasks)
    assert exact == pytest.approx(closed, abs=1e-12)
    if rate < 1:
        assert exact >= target.probability - 1e-12


@pytest.mark.parametrize(
    ("k", "chunks"),
    [(1, 64), (2, 64), (3, 64), (4, 32), (4, 64), (8, 64), (16, 64), (4, 3), (4, 2), (16, 8)],
)
def test_costs_less_than_checking_every_task_until_trusted(k: int, chunks: int) -> None:
    cfg = SpotCheckConfig(k=k)
    rate = cfg.new_device_rate(chunks)
    if min(k, chunks) <= 2:
        # Two openings catch 10 % with 0.19 a check: 20 checks reach 0.985 < 0.99, so the
        # rule falls back to checking every task.
        assert rate == 1.0
        return
    new = lambda passes: reputation.check_probability(  # noqa: E731
        passes,
        trust_after=cfg.trust_after,
        floor=cfg.floor,
        new_rate=rate,
        hold_until=cfg.catch_within_tasks,
    )
    old = lambda passes: reputation.check_probability(  # noqa: E731
        passes, trust_after=cfg.trust_after, floor=cfg.floor
    )
    n = cfg.catch_within_tasks
    assert _expected_checks(n, new) < _expected_checks(n, old)
    assert _expected_checks(200, new) < _expected_checks(200, old)


def test_default_rate_and_its_cost() -> None:
    cfg = SpotCheckConfig()
    # 1 − (1 − p · (1 − 0.9⁴))²⁰ = 0.99  ⇔  p = (1 − 0.01^(1/20)) / 0.3439
    assert cfg.new_device_rate(32) == pytest.approx((1 - 0.01 ** (1 / 20)) / 0.3439, rel=1e-12)
    assert cfg.new_device_rate(64) == cfg.new_device_rate(32)  # C ≥ k: q depends on k only
    assert cfg.new_device_rate(3) > cfg.new_device_rate(4)  # only 3 chunks can be opened
    assert cfg.new_device_rate(2) == 1.0
    # A new device's 32-chunk task costs 7.5 % in re-execution (was 100 % of 4/32 = 12.5 %).
    assert cfg.new_device_rate(32) * 4 / 32 == pytest.approx(0.0748, abs=1e-4)
    assert cfg.should_check(0, 32, 0.59) and not cfg.should_check(0, 32, 0.6)
    # catch_probability = 1: every task of a new device, as before the assurance target.
    assert SpotCheckConfig(catch_probability=1.0).should_check(19, 32, 0.999)


@pytest.mark.parametrize(
    ("passes", "trust_after", "rate"),
    [
        # Trusted: trust_after / passes, capped at the new-device rate, floored.
        (25, 10, 0.4),
        (19, 10, 0.6),
        (1000, 10, 0.1),
        # Trust never raises the rate above a new device's.
        (20, 15, 0.6),
    ],
)
def test_trusted_rate(passes: int, trust_after: int, rate: float) -> None:
    assert reputation.check_probability(
        passes, trust_after=trust_after, floor=0.1, new_rate=0.6, hold_until=20
    ) == pytest.approx(rate)


@pytest.mark.parametrize(
    ("fraction", "within", "probability"), [(0.0, 20, 0.99), (0.1, 0, 0.99), (0.1, 20, 0.0)]
)
def test_impossible_targets_are_refused(fraction: float, within: int, probability: float) -> None:
    with pytest.raises(ValueError, match="must be"):
        Assurance(fraction, within, probability)


@pytest.mark.parametrize(
    ("fraction", "k", "chunks", "tasks", "probability"),
    [
        # C ≥ k: a Poisson approximation (p = −ln(1 − P)/(N q)) would catch 0.87, and
        # p = P / (1 − (1 − q)^N) 0.90, instead of 0.80.
        (0.3, 2, 16, 4, 0.8),
        # C < k: only 3 distinct chunks can be opened; a rate computed for k = 5 catches 0.70.
        (0.3, 5, 3, 4, 0.8),
    ],
)
def test_real_challenges_catch_at_the_predicted_rate(
    fraction: float, k: int, chunks: int, tasks: int, probability: float
) -> None:
    cfg = SpotCheckConfig(
        k=k,
        trust_after=1,  # decay would start at once if the rate did not hold for new devices
        floor=0.0,
        catch_fraction=fraction,
        catch_within_tasks=tasks,
        catch_probability=probability,
    )
    rng = random.Random(20261201)
    devices = 4000
    caught = 0
    for d in range(devices):
        passes = 0
        for n in range(tasks):
            if not cfg.should_check(passes, chunks, rng.random()):
                continue
            faked = {i for i in range(chunks) if rng.random() < fraction}
            indices = spotcheck.challenge_indices(rng.randbytes(32), f"d{d}-t{n}", k, chunks)
            assert len(set(indices)) == min(k, chunks)
            if faked.intersection(indices):
                caught += 1
                break
            passes += 1
    sigma = math.sqrt(probability * (1 - probability) / devices)
    assert abs(caught / devices - probability) < 4 * sigma  # 4σ = 0.025 here
