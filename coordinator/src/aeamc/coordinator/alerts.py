"""The runbook's alerts, evaluated by the coordinator itself (the same conditions as
packaging/monitoring/alerts.yml), so an operator without Prometheus is still told.

Request-based alerts look at the last ``window_s`` of requests (and judge nothing below
``min_requests``); the anchoring alerts at the anchoring status: anchoring is stale once a
microblock has waited longer than ``chain.anchor_interval_s`` plus ``no_anchor_s`` and no
anchor became final in that time. A firing alert remembers since when it fires and clears
as soon as its condition no longer holds (Prometheus also waits each rule's ``for:``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AlertsConfig:
    """Where the coordinator's own alerts fire (docs/runbook.md); same lines as alerts.yml."""

    window_s: float = 300.0
    min_requests: int = 20
    error_share: float = 0.05
    latency_p99_s: float = 0.5
    #: Anchoring is stale once a microblock has waited, and no anchor became final, for
    #: longer than ``chain.anchor_interval_s`` plus this many seconds.
    no_anchor_s: float = 900.0
    wallet_low_ether: float = 0.05
    #: The wallet is empty within this many days at the burn of the last 6 hours.
    wallet_runway_days: float = 7.0
    #: Where an alert's "Runbook" link leads (the alert's anchor is appended): this
    #: coordinator's own ``/runbook`` page, or the ``https://`` URL of the operator's copy.
    runbook_url: str = "/runbook"


def alerts_checks(c: AlertsConfig) -> list[tuple[bool, str]]:
    """The configuration checks of ``[alerts]``, as (holds, what must hold)."""
    return [
        (
            re.fullmatch(r"(/(?!/)|https://)[^\s#]*", c.runbook_url) is not None,
            "alerts.runbook_url must be a path on this coordinator (/…) or an https:// URL",
        ),
    ]


@dataclass(frozen=True)
class Alert:
    name: str
    severity: str
    summary: str
    runbook_url: str


def evaluate(
    requests: Iterable[tuple[int, int, float]],
    anchoring: dict[str, Any] | None,
    now_ms: int,
    limits: AlertsConfig = AlertsConfig(),
) -> list[Alert]:
    """The alerts whose condition holds now (pure: everything is passed in)."""
    firing: list[Alert] = []
    recent = [(s, secs) for t, s, secs in requests if now_ms - t <= limits.window_s * 1000]
    if len(recent) >= limits.min_requests:
        errors = sum(1 for s, _ in recent if s >= 500)
        if errors / len(recent) > limits.error_share:
            firing.append(
                Alert(
                    "HighErrorRate",
                    "page",
                    f"{errors} of {len(recent)} requests failed (5xx) "
                    f"in the last {limits.window_s:.0f} s",
                    f"{limits.runbook_url}#high-error-rate",
                )
            )
        latencies = sorted(secs for _, secs in recent)
        p99 = latencies[math.ceil(0.99 * len(latencies)) - 1]  # nearest rank
        if p99 > limits.latency_p99_s:
            firing.append(
                Alert(
                    "HighLatency",
                    "page",
                    f"p99 latency {p99 * 1000:.0f} ms in the last {limits.window_s:.0f} s",
                    f"{limits.runbook_url}#high-latency",
                )
            )
    if anchoring and anchoring.get("enabled"):
        waiting = anchoring.get("unanchored_blocks", 0)
        age = anchoring.get("last_final_anchor_age_s")
        stalled_for = anchoring.get("oldest_unanchored_age_s")
        line = anchoring.get("anchor_interval_s", 0) + limits.no_anchor_s
        if (
            waiting
            and stalled_for is not None
            and stalled_for > line
            and (age is None or age > line)
        ):
            firing.append(
                Alert(
                    "NoNewMicroblocksAnchored",
                    "page",
                    f"{waiting} microblocks wait; last final anchor "
                    + ("never" if age is None else f"{age} s ago")
                    + (
                        f"; last error: {anchoring['last_error']}"
                        if anchoring.get("last_error")
                        else ""
                    ),
                    f"{limits.runbook_url}#no-new-microblocks-anchored",
                )
            )
        balance = anchoring.get("balance_wei")
        if balance is not None and balance < limits.wallet_low_ether * 10**18:
            firing.append(
                Alert(
                    "AnchoringWalletLow",
                    "warning",
                    f"the anchoring wallet holds {balance / 10**18:.4f} ether",
                    f"{limits.runbook_url}#anchoring-wallet-low",
                )
            )
        burn = anchoring.get("wallet_burn_wei_per_s")
        if balance is not None and burn is not None and burn > 0:
            runway_s = balance / burn
            if runway_s < limits.wallet_runway_days * 86400:
                firing.append(
                    Alert(
                        "AnchoringWalletEmptySoon",
                        "warning",
                        f"the anchoring wallet is empty in {runway_s / 86400:.1f} days "
                        "at the burn of the last 6 hours",
                        f"{limits.runbook_url}#anchoring-wallet-empty-soon",
                    )
                )
    return firing


class AlertTracker:
    """Remembers since when each alert fires, for ``since_ms`` in the health report."""

    def __init__(self) -> None:
        self._since: dict[str, int] = {}

    def update(self, firing: list[Alert], now_ms: int) -> list[dict[str, Any]]:
        names = {a.name for a in firing}
        for name in list(self._since):
            if name not in names:
                del self._since[name]
        out = []
        for a in firing:
            since = self._since.setdefault(a.name, now_ms)
            out.append(
                {
                    "name": a.name,
                    "severity": a.severity,
                    "summary": a.summary,
                    "since_ms": since,
                    "runbook_url": a.runbook_url,
                }
            )
        return out
