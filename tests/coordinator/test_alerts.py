"""The coordinator's own evaluation of the runbook's alerts (pure)."""

from __future__ import annotations

from aeamc.coordinator.alerts import AlertTracker, evaluate

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


def test_tracker_keeps_since_until_cleared() -> None:
    t = AlertTracker()
    slow = evaluate([(NOW, 202, 0.9)] * 30, None, NOW)
    first = t.update(slow, NOW)
    assert first[0]["since_ms"] == NOW and first[0]["runbook_url"].endswith("#high-latency")
    assert t.update(slow, NOW + 5000)[0]["since_ms"] == NOW
    assert t.update([], NOW + 6000) == []
    assert t.update(slow, NOW + 7000)[0]["since_ms"] == NOW + 7000
