"""EPS (SPEC §4): the worked example, each term, threshold edges and eligibility."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction

import pytest

from aeamc.shared.eps import Candidate, EpsConfig, eps, eps_exact, ineligibility, rank
from aeamc.shared.errors import ValidationError
from aeamc.shared.messages import Telemetry

BASE = Telemetry(
    battery_pct=80,
    charging=False,
    cpu_temp_mc=45_000,
    cpu_load_permille=120,
    net_latency_us=50_000,
    mem_available_kb=1 << 20,
)
NOW = 1_000_000


def test_spec_example() -> None:
    assert eps(BASE) == 0.5875
    assert eps_exact(BASE) == Fraction(47, 80)


def test_mains_device_scores_full_energy_terms() -> None:
    mains = replace(BASE, battery_pct=None, charging=None)
    # 0.4 + 0.2 + 0.2*(1-45/80) + 0.2*0.9
    assert eps_exact(mains) == Fraction(2, 5) + Fraction(1, 5) + Fraction(7, 80) + Fraction(9, 50)


def test_unknown_temperature_and_latency_score_half() -> None:
    t = replace(BASE, cpu_temp_mc=None, net_latency_us=None)
    assert eps_exact(t) == Fraction(8, 25) + Fraction(1, 10) + Fraction(1, 10)


def test_caps_and_floors() -> None:
    hot = replace(BASE, cpu_temp_mc=95_000, net_latency_us=2_000_000)
    assert eps_exact(hot) == Fraction(8, 25)
    cold = replace(BASE, cpu_temp_mc=-10_000, net_latency_us=0)
    assert eps_exact(cold) == Fraction(8, 25) + Fraction(1, 5) + Fraction(1, 5)
    charging_full = replace(BASE, battery_pct=100, charging=True, cpu_temp_mc=0, net_latency_us=0)
    assert eps_exact(charging_full) == 1


def test_weights_must_sum_to_one_exactly() -> None:
    EpsConfig(w_battery=0.1, w_charging=0.2, w_temperature=0.3, w_network=0.4)
    with pytest.raises(ValidationError, match="sum to 1"):
        EpsConfig(w_battery=0.5)
    with pytest.raises(ValidationError, match="w_battery"):
        EpsConfig(w_battery=-0.1, w_charging=0.5, w_temperature=0.3, w_network=0.3)
    for bad in (
        {"max_temp_c": 0},
        {"max_latency_ms": -1},
        {"min_eps": 1.5},
        {"min_poas": -1},
        {"poa_window_ms": 0},
    ):
        with pytest.raises(ValidationError):
            EpsConfig(**bad)  # type: ignore[arg-type]


def _candidate(**over: object) -> Candidate:
    fields: dict[str, object] = {
        "device_id": "a" * 32,
        "state": "active",
        "telemetry": BASE,
        "poa_times": [NOW - 1000, NOW - 31_000],
        "kinds": frozenset({"sha256-chain"}),
        "busy": False,
        "reputation": 1.0,
    }
    fields.update(over)
    return Candidate(**fields)  # type: ignore[arg-type]


def test_threshold_edges_are_exact() -> None:
    config = EpsConfig(min_eps=0.5875)
    assert ineligibility(_candidate(), "sha256-chain", NOW, config) is None
    # One percent of battery less is 0.004 below: ineligible.
    lower = _candidate(telemetry=replace(BASE, battery_pct=79))
    assert "below" in (ineligibility(lower, "sha256-chain", NOW, config) or "")
    # A device exactly at 0.5 with the default threshold is eligible.
    at_half = replace(BASE, battery_pct=50, cpu_temp_mc=40_000, net_latency_us=0)
    assert eps_exact(at_half) == Fraction(1, 5) + Fraction(1, 10) + Fraction(1, 5)
    assert ineligibility(_candidate(telemetry=at_half), "sha256-chain", NOW, EpsConfig()) is None


@pytest.mark.parametrize(
    ("over", "reason"),
    [
        ({"state": "quarantined"}, "state is quarantined"),
        ({"state": "pending"}, "state is pending"),
        ({"poa_times": [NOW - 1000]}, "1 heartbeats"),
        ({"poa_times": [NOW - 1000, NOW - 120_001]}, "1 heartbeats"),
        ({"telemetry": None}, "no telemetry"),
        ({"kinds": frozenset({"classify-int8"})}, "does not support"),
        ({"busy": True}, "busy"),
    ],
)
def test_ineligibility_reasons(over: dict[str, object], reason: str) -> None:
    got = ineligibility(_candidate(**over), "sha256-chain", NOW, EpsConfig())
    assert got is not None and reason in got


def test_poa_window_edge_is_inclusive() -> None:
    c = _candidate(poa_times=[NOW, NOW - 120_000])
    assert ineligibility(c, "sha256-chain", NOW, EpsConfig()) is None


def test_rank_prefers_eps_times_reputation() -> None:
    good = _candidate(device_id="b" * 32, reputation=0.9)
    better = _candidate(device_id="c" * 32, telemetry=replace(BASE, charging=True), reputation=0.8)
    tie = _candidate(device_id="a" * 32, reputation=0.9)
    out = _candidate(device_id="d" * 32, busy=True)
    assert rank([good, better, tie, out], "sha256-chain", NOW, EpsConfig()) == [
        "c" * 32,
        "a" * 32,
        "b" * 32,
    ]


def _reference(t: Telemetry, config: EpsConfig) -> Fraction:
    """SPEC §4 term by term in Fractions: what the integer arithmetic must equal."""

    def exact(x: float | int) -> Fraction:
        return Fraction(str(x)) if isinstance(x, float) else Fraction(x)

    half = Fraction(1, 2)
    if t.battery_pct is None:
        fb, fc = Fraction(1), Fraction(1)
    else:
        fb, fc = Fraction(t.battery_pct, 100), Fraction(1 if t.charging else 0)
    cap_t, cap_n = config.max_temp_c * 1000, config.max_latency_ms * 1000
    ft = half if t.cpu_temp_mc is None else 1 - Fraction(min(max(t.cpu_temp_mc, 0), cap_t), cap_t)
    fn = half if t.net_latency_us is None else 1 - Fraction(min(t.net_latency_us, cap_n), cap_n)
    return (
        exact(config.w_battery) * fb
        + exact(config.w_charging) * fc
        + exact(config.w_temperature) * ft
        + exact(config.w_network) * fn
    )


def test_eps_equals_the_term_by_term_sum_on_random_telemetry() -> None:
    """Bit for bit: ``eps`` is the float of the exact sum, ``eps_exact`` the sum itself."""
    import random

    rng = random.Random(20_24)
    weights = [
        (0.4, 0.2, 0.2, 0.2),
        (0.1, 0.2, 0.3, 0.4),
        (0.25, 0.25, 0.25, 0.25),
        (1, 0, 0, 0),
        (0.7, 0.1, 0.1, 0.1),
        (0.33, 0.33, 0.33, 0.01),
    ]
    for _ in range(5000):
        wb, wc, wt, wn = rng.choice(weights)
        config = EpsConfig(
            w_battery=wb,
            w_charging=wc,
            w_temperature=wt,
            w_network=wn,
            max_temp_c=rng.choice((80, 1, 7, 200)),
            max_latency_ms=rng.choice((500, 1, 3, 10_000)),
        )
        t = Telemetry(
            battery_pct=rng.choice((None, rng.randint(0, 100))),
            charging=rng.choice((None, True, False)),
            cpu_temp_mc=rng.choice((None, rng.randint(-60_000, 200_000))),
            cpu_load_permille=rng.randint(0, 1000),
            net_latency_us=rng.choice((None, rng.randint(0, 3_600_000_000), rng.randint(0, 9999))),
            mem_available_kb=None,
        )
        expected = _reference(t, config)
        assert eps_exact(t, config) == expected
        assert eps(t, config) == float(expected)
        assert eps(t, config).hex() == float(expected).hex()
