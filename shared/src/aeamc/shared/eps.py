"""Energy Participation Score and device eligibility (SPEC §4).

EPS is computed in exact rational arithmetic so that a device sitting precisely on the
``min_eps`` threshold is treated the same on every platform and in every test; the float
is only for display.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction

from .errors import ValidationError
from .messages import Telemetry

_HALF = Fraction(1, 2)


def _exact(x: float | int | str) -> Fraction:
    """Exact value of a configured decimal (``0.2`` means 1/5, not its binary neighbour)."""
    return Fraction(str(x)) if isinstance(x, float) else Fraction(x)


@dataclass(frozen=True)
class EpsConfig:
    """Weights, caps and eligibility thresholds; every default is SPEC §4's."""

    w_battery: float = 0.4
    w_charging: float = 0.2
    w_temperature: float = 0.2
    w_network: float = 0.2
    max_temp_c: int = 80
    max_latency_ms: int = 500
    min_eps: float = 0.5
    min_poas: int = 2
    poa_window_ms: int = 120_000
    _weights: tuple[Fraction, ...] = field(init=False, repr=False, compare=False)
    _terms: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        weights = (self.w_battery, self.w_charging, self.w_temperature, self.w_network)
        names = ("w_battery", "w_charging", "w_temperature", "w_network")
        for name, w in zip(names, weights, strict=True):
            if not isinstance(w, (int, float)) or isinstance(w, bool) or not 0 <= w <= 1:
                raise ValidationError(f"eps.{name}", "must be a number between 0 and 1")
        exact = tuple(_exact(w) for w in weights)
        if sum(exact) != 1:
            raise ValidationError("eps", f"weights must sum to 1, not {float(sum(exact))}")
        if not isinstance(self.max_temp_c, int) or self.max_temp_c <= 0:
            raise ValidationError("eps.max_temp_c", "must be a positive integer")
        if not isinstance(self.max_latency_ms, int) or self.max_latency_ms <= 0:
            raise ValidationError("eps.max_latency_ms", "must be a positive integer")
        if not 0 <= self.min_eps <= 1:
            raise ValidationError("eps.min_eps", "must be between 0 and 1")
        if not isinstance(self.min_poas, int) or self.min_poas < 0:
            raise ValidationError("eps.min_poas", "must be a non-negative integer")
        if not isinstance(self.poa_window_ms, int) or self.poa_window_ms <= 0:
            raise ValidationError("eps.poa_window_ms", "must be a positive integer")
        object.__setattr__(self, "_weights", exact)
        object.__setattr__(self, "_terms", _terms(self))


def _terms(config: EpsConfig) -> tuple[int, ...]:
    """SPEC §4's weighted sum over one common denominator, for ``config``: that
    denominator ``den`` and, for each factor, what one unit of its numerator adds to
    the sum's numerator (battery in percent, charging 0/1, temperature and latency in
    their caps' units), with the caps ``t_cap`` and ``n_cap``.

    Each factor is an integer over its own denominator: battery/100, charging/1,
    temperature/t_cap, latency/n_cap; an unknown temperature or latency counts one
    half, which is (cap/2)/cap exactly, since both caps are multiples of 1000."""
    wb, wc, wt, wn = config._weights
    t_cap = config.max_temp_c * 1000
    n_cap = config.max_latency_ms * 1000
    dens = (wb.denominator * 100, wc.denominator, wt.denominator * t_cap, wn.denominator * n_cap)
    den = dens[0] * dens[1] * dens[2] * dens[3]
    nums = (wb.numerator, wc.numerator, wt.numerator, wn.numerator)
    kb, kc, kt, kn = (n * (den // d) for n, d in zip(nums, dens, strict=True))
    return (den, kb, kc, kt, kn, t_cap, n_cap)


def _numerator(t: Telemetry, config: EpsConfig) -> tuple[int, int]:
    """The weighted sum of SPEC §4 as (numerator, denominator), in integers: the same
    exact value as summing Fractions term by term, with no reduction at all (this runs
    for every heartbeat and every candidate of every task)."""
    den, kb, kc, kt, kn, t_cap, n_cap = config._terms
    if t.battery_pct is None:
        # No battery: the device is on mains, the best case for both energy terms.
        fb, fc = 100, 1
    else:
        fb, fc = t.battery_pct, 1 if t.charging else 0
    temp, latency = t.cpu_temp_mc, t.net_latency_us
    ft = t_cap // 2 if temp is None else t_cap - min(max(temp, 0), t_cap)
    fn = n_cap // 2 if latency is None else n_cap - min(latency, n_cap)
    return kb * fb + kc * fc + kt * ft + kn * fn, den


def eps_exact(t: Telemetry, config: EpsConfig = EpsConfig()) -> Fraction:
    num, den = _numerator(t, config)
    return Fraction(num, den)


def eps(t: Telemetry, config: EpsConfig = EpsConfig()) -> float:
    # The correctly rounded quotient of the two integers: what float() of the reduced
    # Fraction gives (same rational, and int / int rounds correctly), without reducing.
    num, den = _numerator(t, config)
    return num / den


@dataclass(frozen=True)
class Candidate:
    """What the scheduler knows of a device when choosing who runs a task."""

    device_id: str
    state: str
    telemetry: Telemetry | None
    poa_times: Sequence[int]
    kinds: frozenset[str]
    busy: bool
    reputation: float


def ineligibility(c: Candidate, kind: str, now_ms: int, config: EpsConfig) -> str | None:
    """Why ``c`` may not take a task of ``kind`` now, or ``None`` when it may."""
    if c.state != "active":
        return f"state is {c.state}"
    recent = sum(1 for t in c.poa_times if now_ms - config.poa_window_ms <= t <= now_ms)
    if recent < config.min_poas:
        return f"{recent} heartbeats in the window, {config.min_poas} required"
    if c.telemetry is None:
        return "no telemetry"
    if eps_exact(c.telemetry, config) < _exact(config.min_eps):
        return f"EPS {eps(c.telemetry, config):.4f} below {config.min_eps}"
    if kind not in c.kinds:
        return f"does not support {kind}"
    if c.busy:
        return "busy"
    return None


def rank(candidates: Sequence[Candidate], kind: str, now_ms: int, config: EpsConfig) -> list[str]:
    """Eligible device ids, best first: higher EPS × reputation, ties broken by id."""
    scored = [
        (eps_exact(c.telemetry, config) * _exact(c.reputation), c.device_id)  # type: ignore[arg-type]
        for c in candidates
        if ineligibility(c, kind, now_ms, config) is None
    ]
    scored.sort(key=lambda s: (-s[0], s[1]))
    return [device_id for _, device_id in scored]
