"""The shipped Prometheus alert rules are valid and their unit tests pass (promtool), and
every metric they use is one the coordinator really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

MONITORING = Path(__file__).resolve().parents[2] / "packaging" / "monitoring"


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


def test_rules_check_and_unit_tests(promtool: str) -> None:
    check = promtool_run(promtool, "check", "rules", "alerts.yml")
    assert "4 rules found" in check.stdout
    promtool_run(promtool, "test", "rules", "alerts_test.yml")


def test_rules_and_dashboard_use_exported_metrics() -> None:
    source = (
        Path(__file__).resolve().parents[2] / "coordinator/src/aeamc/coordinator/metrics.py"
    ).read_text()
    exported = set(re.findall(r'f"\{PREFIX\}_([a-z_]+)"', source))
    exported |= set(re.findall(r'counter\(\s*"([a-z_]+)"', source))
    text = (MONITORING / "alerts.yml").read_text() + (
        MONITORING / "grafana-dashboard.json"
    ).read_text()
    used = set(re.findall(r"aeamc_coordinator_([a-z_]+?)(?:_total|_bucket)?\b", text))
    assert used <= exported, used - exported
    for rule in re.findall(r"runbook_url: \"docs/runbook.md#([a-z-]+)\"", text):
        anchor = f"## {rule.replace('-', ' ')}"
        runbook = (MONITORING.parents[1] / "docs" / "runbook.md").read_text().lower()
        assert anchor in runbook, anchor
    json.loads((MONITORING / "grafana-dashboard.json").read_text())
