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


def eps_exact(t: Telemetry, config: EpsConfig = EpsConfig()) -> Fraction:
    # The weighted sum of SPEC §4, over one common denominator in integers: the same
    # exact value as summing Fractions term by term, with one reduction instead of a
    # dozen (this runs for every heartbeat and every candidate of every task).
    wb, wc, wt, wn = config._weights
    t_cap = config.max_temp_c * 1000
    n_cap = config.max_latency_ms * 1000
    if t.battery_pct is None:
        # No battery: the device is on mains, the best case for both energy terms.
        fb_num, fc = 100, 1
    else:
        fb_num, fc = t.battery_pct, 1 if t.charging else 0
    # Each factor f as an integer over its own denominator: fb/100, ft/t_cap, fn/n_cap
    # (an unknown temperature or latency counts as one half).
    ft_num = t_cap - min(max(t.cpu_temp_mc, 0), t_cap) if t.cpu_temp_mc is not None else None
    fn_num = n_cap - min(t.net_latency_us, n_cap) if t.net_latency_us is not None else None
    ft_den, fn_den = (t_cap, n_cap)
    if ft_num is None:
        ft_num, ft_den = 1, 2
    if fn_num is None:
        fn_num, fn_den = 1, 2
    terms = (
        (wb.numerator * fb_num, wb.denominator * 100),
        (wc.numerator * fc, wc.denominator),
        (wt.numerator * ft_num, wt.denominator * ft_den),
        (wn.numerator * fn_num, wn.denominator * fn_den),
    )
    den = 1
    for _, d in terms:
        den *= d
    num = sum(n * (den // d) for n, d in terms)
    return Fraction(num, den)


def eps(t: Telemetry, config: EpsConfig = EpsConfig()) -> float:
    return float(eps_exact(t, config))


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
