"""The shipped Prometheus alert rules are valid and their unit tests pass (promtool), every
metric they use is one the coordinator really exports, each coordinator is judged on its
own, and the coordinator's own alerts use the same lines."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from aeamc.coordinator.config import AlertsConfig
from aeamc.coordinator.dashboard.markdown import headings
from aeamc.coordinator.metrics import OPTIONAL_ANCHORING_GAUGES

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "packaging" / "monitoring"
ALERTS = (MONITORING / "alerts.yml").read_text()
TESTS = (MONITORING / "alerts_test.yml").read_text()
DASHBOARD = (MONITORING / "grafana-dashboard.json").read_text()


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make test` installs Debian's prometheus package"
    return path


def promtool_run(promtool: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``promtool ARGS`` in packaging/monitoring; asserts it succeeded (with its output)."""
    proc = subprocess.run(
        [promtool, *args], cwd=MONITORING, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def rules() -> dict[str, str]:
    """Each alert's name and the rest of its rule's text (expression, labels, annotations)."""
    parts = re.split(r"^\s+- alert: (\w+)\n", ALERTS, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_rules_check_and_unit_tests(promtool: str) -> None:
    check = promtool_run(promtool, "check", "rules", "alerts.yml")
    assert f"{len(rules())} rules found" in check.stdout
    promtool_run(promtool, "test", "rules", "alerts_test.yml")


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    """Every dashboard query is valid PromQL: promtool checks them as recording rules."""
    exprs = [t["expr"] for p in json.loads(DASHBOARD)["panels"] for t in p["targets"]]
    assert exprs
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, expr in enumerate(exprs):
        lines += [f"      - record: dashboard_query_{i}", f"        expr: {json.dumps(expr)}"]
    (tmp_path / "dashboard.yml").write_text("\n".join(lines) + "\n")
    check = promtool_run(promtool, "check", "rules", str(tmp_path / "dashboard.yml"))
    assert f"{len(exprs)} rules found" in check.stdout


def test_every_rule_is_tested_firing_and_silent() -> None:
    assert set(rules()) == {
        "CoordinatorDown",
        "HighErrorRate",
        "HighLatency",
        "NoNewMicroblocksAnchored",
        "AnchoringWalletLow",
        "AnchoringWalletEmptySoon",
    }
    cases = re.findall(r"alertname: (\w+)\n\s+exp_alerts:( \[\])?", TESTS)
    for name in rules():
        assert (name, "") in cases, f"{name} is never tested firing"
        assert (name, " []") in cases, f"{name} is never tested silent"


def test_every_rule_judges_each_instance_on_its_own() -> None:
    """An aggregation or a vector match that drops ``instance`` lets one coordinator
    dilute or hide another's trouble."""
    for name, text in rules().items():
        expr = text.split("labels:")[0]
        for agg in re.finditer(
            r"\b(sum|avg|min|max|count|stddev|topk|bottomk|quantile)\b\s*(by\s*\(([^)]*)\))?\s*\(",
            expr,
        ):
            assert agg.group(3) and "instance" in agg.group(3), (name, agg.group(0))
        for match in re.finditer(r"\b(on|ignoring)\s*\(([^)]*)\)", expr):
            assert match.group(1) == "on" and "instance" in match.group(2), (name, match[0])
        assert "without" not in expr, name
        assert "$labels.instance" in text, f"{name}'s description does not name the instance"


def test_coordinator_down_covers_down_and_absent_job() -> None:
    expr = rules()["CoordinatorDown"]
    assert 'up{job="aeamc-coordinator"} == 0' in expr
    assert 'absent(up{job="aeamc-coordinator"})' in expr
    assert "job_name: aeamc-coordinator" in (MONITORING / "README.md").read_text()


def test_the_coordinator_alerts_use_the_same_lines() -> None:
    """The rules' numbers are AlertsConfig's defaults (the coordinator's own evaluation)."""
    limits = AlertsConfig()
    r = rules()
    assert f"> {limits.error_share}" in r["HighErrorRate"]
    assert f">= {limits.min_requests}" in r["HighErrorRate"]
    assert f">= {limits.min_requests}" in r["HighLatency"]
    assert f"> {limits.latency_p99_s}" in r["HighLatency"]
    assert f"[{limits.window_s / 60:.0f}m]" in r["HighErrorRate"]
    assert (
        f"aeamc_coordinator_anchor_interval_seconds + {limits.no_anchor_s:.0f})"
        in (r["NoNewMicroblocksAnchored"])
    )
    assert (
        f"< {limits.wallet_low_ether * 10**18:.0e}".replace("e+", "e") in (r["AnchoringWalletLow"])
    )
    assert f"< {limits.wallet_runway_days:.0f} * 86400" in r["AnchoringWalletEmptySoon"]
    assert "[6h]" in r["AnchoringWalletEmptySoon"]
    # The dashboard draws the same lines.
    lines = {
        p["title"].split(" (")[0]: [
            s["value"] for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"]
        ][1:]
        for p in json.loads(DASHBOARD)["panels"]
        if "thresholds" in p["fieldConfig"]["defaults"]
    }
    assert lines == {
        "Coordinators up": [1],
        "Error rate": [limits.error_share],
        "p99 latency": [limits.latency_p99_s],
        "Anchoring wallet balance": [limits.wallet_low_ether],
        "Anchoring wallet runway": [limits.wallet_runway_days],
    }


def test_rules_and_dashboard_use_exported_metrics() -> None:
    source = (ROOT / "coordinator/src/aeamc/coordinator/metrics.py").read_text()
    exported = set(re.findall(r'f"\{PREFIX\}_([a-z_]+)"', source))
    exported |= set(re.findall(r'counter\(\s*"([a-z_]+)"', source))
    exported |= {name for _, name, _ in OPTIONAL_ANCHORING_GAUGES}
    text = ALERTS + DASHBOARD
    used = set(re.findall(r"aeamc_coordinator_([a-z_]+?)(?:_total|_bucket)?\b", text))
    assert used <= exported, used - exported
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    standard = {m.name for m in registry.collect()}
    used_standard = set(re.findall(r"\b((?:process|python)_[a-z_]+?)(?:_total)?\b", DASHBOARD))
    assert used_standard, "the dashboard shows no process metrics"
    assert used_standard <= standard, used_standard - standard
    anchors = {h.anchor for h in headings((ROOT / "docs" / "runbook.md").read_text())}
    links = re.findall(r"runbook_url: \"([^\"]+)\"", ALERTS)
    assert len(links) == ALERTS.count("- alert:"), "every rule carries a runbook link"
    for link in links:
        base, _, anchor = link.partition("#")
        assert base in {
            "https://{{ $labels.instance }}/runbook",
            "file:///usr/share/doc/microblock-coordinator/runbook.md",
        }, link
        assert anchor in anchors, link
    json.loads(DASHBOARD)
