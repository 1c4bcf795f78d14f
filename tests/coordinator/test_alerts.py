"""The coordinator's own evaluation of the runbook's alerts (pure)."""

from __future__ import annotations

import pytest

from aeamc.coordinator.alerts import AlertTracker, evaluate
from aeamc.coordinator.anchoring.status import ChainStatus
from aeamc.coordinator.config import AlertsConfig, parse_config
from aeamc.shared.runtime.configfiles import ConfigError

NOW = 10_000_000


def names(alerts: list) -> set[str]:  # type: ignore[type-arg]
    return {a.name for a in alerts}


def test_error_rate_needs_more_than_five_percent_of_enough_requests() -> None:
    ok = [(NOW - 1000, 202, 0.01)] * 95 + [(NOW - 1000, 500, 0.01)] * 5
    assert names(evaluate(ok, None, NOW)) == set()
    bad = [(NOW - 1000, 202, 0.01)] * 94 + [(NOW - 1000, 500, 0.01)] * 6
    assert names(evaluate(bad, None, NOW)) == {"HighErrorRate"}
    few = [(NOW - 1000, 500, 0.01)] * 19
    assert names(evaluate(few, None, NOW)) == set()
    old = [(NOW - 400_000, 500, 0.01)] * 50
    assert names(evaluate(old, None, NOW)) == set()
    client_errors = [(NOW - 1000, 400, 0.01)] * 50
    assert names(evaluate(client_errors, None, NOW)) == set()


def test_latency_p99() -> None:
    fast = [(NOW, 202, 0.01)] * 99 + [(NOW, 202, 2.0)]
    assert names(evaluate(fast, None, NOW)) == set()
    slow = [(NOW, 202, 0.01)] * 98 + [(NOW, 202, 0.8)] * 2
    assert names(evaluate(slow, None, NOW)) == {"HighLatency"}


def test_anchoring_alerts() -> None:
    base = {"enabled": True, "unanchored_blocks": 3, "last_final_anchor_age_s": None}
    assert names(evaluate([], {**base, "oldest_unanchored_age_s": 60}, NOW)) == set()
    stalled = {**base, "oldest_unanchored_age_s": 901, "last_error": "connection refused"}
    fired = evaluate([], stalled, NOW)
    assert names(fired) == {"NoNewMicroblocksAnchored"}
    assert "connection refused" in fired[0].summary and "never" in fired[0].summary
    assert (
        names(evaluate([], {**base, "unanchored_blocks": 0, "oldest_unanchored_age_s": 5000}, NOW))
        == set()
    )
    poor = {"enabled": True, "unanchored_blocks": 0, "balance_wei": 10**16}
    assert names(evaluate([], poor, NOW)) == {"AnchoringWalletLow"}
    assert names(evaluate([], {**poor, "enabled": False}, NOW)) == set()


def test_anchoring_is_stale_after_the_configured_interval_plus_15_minutes() -> None:
    """The same line as alerts.yml: interval + 900 s, for the oldest waiting block and the
    last final anchor alike."""
    hourly = {"enabled": True, "unanchored_blocks": 4, "anchor_interval_s": 3600}
    # A normal hourly cycle: blocks wait up to the hour, the last anchor is up to an hour old.
    for waited in (60, 900, 1800, 3599, 4500):
        cycle = {**hourly, "oldest_unanchored_age_s": waited, "last_final_anchor_age_s": waited}
        assert names(evaluate([], cycle, NOW)) == set(), waited
    stalled = {**hourly, "oldest_unanchored_age_s": 4501, "last_final_anchor_age_s": 4600}
    assert names(evaluate([], stalled, NOW)) == {"NoNewMicroblocksAnchored"}
    never = {**hourly, "oldest_unanchored_age_s": 4501, "last_final_anchor_age_s": None}
    assert names(evaluate([], never, NOW)) == {"NoNewMicroblocksAnchored"}
    # An anchor became final within the line: the chain moves, not stale.
    moving = {**hourly, "oldest_unanchored_age_s": 5000, "last_final_anchor_age_s": 4500}
    assert names(evaluate([], moving, NOW)) == set()
    # Idle for a day, then a block formed 10 minutes ago: not stale yet.
    idle = {**hourly, "oldest_unanchored_age_s": 600, "last_final_anchor_age_s": 86400}
    assert names(evaluate([], idle, NOW)) == set()
    # A 10 s interval: the line is 910 s.
    quick = {**hourly, "anchor_interval_s": 10, "last_final_anchor_age_s": None}
    assert names(evaluate([], {**quick, "oldest_unanchored_age_s": 910}, NOW)) == set()
    assert names(evaluate([], {**quick, "oldest_unanchored_age_s": 911}, NOW)) == {
        "NoNewMicroblocksAnchored"
    }


def test_wallet_runway() -> None:
    """AnchoringWalletEmptySoon: empty within 7 days at the current burn; the floor apart."""
    ether = 10**18
    rich = {"enabled": True, "unanchored_blocks": 0, "balance_wei": ether}
    six_days = ether / (6 * 86400)
    fired = evaluate([], {**rich, "wallet_burn_wei_per_s": six_days}, NOW)
    assert names(fired) == {"AnchoringWalletEmptySoon"}
    assert "6.0 days" in fired[0].summary
    assert fired[0].runbook_url.endswith("#anchoring-wallet-empty-soon")
    for burn in (ether / (8 * 86400), 0, -six_days, None):
        assert names(evaluate([], {**rich, "wallet_burn_wei_per_s": burn}, NOW)) == set(), burn
    poor = {**rich, "balance_wei": 10**16, "wallet_burn_wei_per_s": six_days}
    assert names(evaluate([], poor, NOW)) == {"AnchoringWalletLow", "AnchoringWalletEmptySoon"}


def test_wallet_burn_is_the_balance_slope_over_six_hours() -> None:
    s = ChainStatus()
    assert s.burn_wei_per_s() is None
    minute = 60_000
    for i in range(8 * 60 * 6):  # eight hours of balance reads every 10 s
        s.observe_balance(i * 10_000, 10**18 - (i * 10_000 // minute) * 10**14)
    assert s.balance_wei == 10**18 - (8 * 60 * 6 - 1) * 10_000 // minute * 10**14
    assert len(s.balance_samples) == 6 * 60  # one a minute, six hours
    burn = s.burn_wei_per_s()
    assert burn is not None and abs(burn - 10**14 / 60) < 1
    s.observe_balance(8 * 3600 * 1000, 10**19)  # refilled
    refilled = s.burn_wei_per_s()
    assert refilled is not None and refilled < 0


def test_tracker_keeps_since_until_cleared() -> None:
    t = AlertTracker()
    slow = evaluate([(NOW, 202, 0.9)] * 30, None, NOW)
    first = t.update(slow, NOW)
    assert first[0]["since_ms"] == NOW and first[0]["runbook_url"].endswith("#high-latency")
    assert t.update(slow, NOW + 5000)[0]["since_ms"] == NOW
    assert t.update([], NOW + 6000) == []
    assert t.update(slow, NOW + 7000)[0]["since_ms"] == NOW + 7000


def test_runbook_links_follow_the_configured_base() -> None:
    """Links lead to this coordinator's /runbook unless the operator names their own copy."""
    failing = [(NOW, 500, 0.01)] * 20
    (default,) = evaluate(failing, None, NOW)
    assert default.runbook_url == "/runbook#high-error-rate"
    own = AlertsConfig(runbook_url="https://wiki.example.org/aeamc/runbook")
    (moved,) = evaluate(failing, None, NOW, own)
    assert moved.runbook_url == "https://wiki.example.org/aeamc/runbook#high-error-rate"


@pytest.mark.parametrize(
    "url", ["javascript:alert(1)", "http://wiki.lan/runbook", "runbook", "//evil.example/x", "/a b"]
)
def test_a_runbook_url_the_dashboard_would_not_link_is_refused(url: str) -> None:
    with pytest.raises(ConfigError, match=r"alerts\.runbook_url"):
        parse_config({"alerts": {"runbook_url": url}})
