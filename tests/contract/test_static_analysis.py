"""Slither finds nothing in the deployed contract that its source does not explain.

slither-analyzer is pinned in requirements/ and runs through tools/run_slither.py, which
compiles with the pinned npm solc (tools/solc/solc), so nothing is downloaded. A finding is
accepted only where the line before it says `// slither-disable-next-line <detector>: <reason>`;
contracts/slither.config.json excludes one detector, solc-version (see contracts/README.md).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.anvil import REPO_ROOT

RUNNER = REPO_ROOT / "tools" / "run_slither.py"
SOLC_WRAPPER = REPO_ROOT / "tools" / "solc" / "solc"
CONFIG = REPO_ROOT / "contracts" / "slither.config.json"
#: What crytic-compile's standard-JSON mode compiles for a directory target: its *.sol files,
#: not those of subfolders (contracts/bench/ holds gas baselines that are never deployed).
ANALYSED = sorted((REPO_ROOT / "contracts").glob("*.sol"))
SLITHER_ARGS = ["contracts", "--config-file", "contracts/slither.config.json"]
SUPPRESSION = re.compile(
    r"^\s*//\s*slither-disable-next-line\s+([a-z0-9-]+(?:,[a-z0-9-]+)*):\s*(.+)$"
)
#: A closed local port: any download slither or crytic-compile attempted would fail.
NO_NETWORK = "http://127.0.0.1:9"
#: slither 0.9.6's list of trusted compilers ends at 0.8.18; the contract needs 0.8.24 or
#: later for cancun, and that detector's compiler-level finding has no source line to annotate.
EXCLUDED_DETECTORS = "solc-version"


def node_binary() -> str:
    """The wrapper runs on node; its absence is a broken setup, not a reason to skip."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH; install Node.js 20+ and run `npm ci`", pytrace=False)
    return node


def run_slither(root: Path, report_path: Path) -> tuple[dict[str, Any], str]:
    """Slither's JSON report on ``root``/contracts and its log, as `make test` produces them."""
    node_binary()
    report_path.unlink(missing_ok=True)  # slither refuses to overwrite a report
    env = dict(os.environ)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        env[var] = NO_NETWORK
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    result = subprocess.run(
        [sys.executable, str(RUNNER), *SLITHER_ARGS, "--json", str(report_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=root,
        env=env,
    )
    if "No module named 'slither'" in result.stderr:
        pytest.fail("slither-analyzer is not installed: run `make deps`", pytrace=False)
    try:
        report: dict[str, Any] = json.loads(report_path.read_text())
    except (OSError, json.JSONDecodeError):
        pytest.fail(f"slither wrote no JSON report:\n{result.stdout}\n{result.stderr}")
    assert report["success"] is True, (report["error"], result.stderr)
    assert report["error"] is None
    return report, result.stderr


def findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    return list(report["results"].get("detectors", []))


def describe(found: list[dict[str, Any]]) -> str:
    return "\n".join(f"{f['check']} ({f['impact']}): {f['description'].strip()}" for f in found)


def suppressions(path: Path) -> list[tuple[int, str, str]]:
    """(line of the suppressed statement, detector, reason) for each annotation in ``path``."""
    found = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        match = SUPPRESSION.match(line)
        if match:
            found.extend((number + 1, check, match.group(2)) for check in match.group(1).split(","))
    return found


def finding_lines(finding: dict[str, Any]) -> set[tuple[str, int]]:
    return {
        (Path(e["source_mapping"]["filename_relative"]).name, line)
        for e in finding["elements"]
        if e.get("source_mapping")
        for line in e["source_mapping"]["lines"]
    }


def test_slither_reports_nothing_unsuppressed(tmp_path: Path) -> None:
    report, log = run_slither(REPO_ROOT, tmp_path / "slither.json")
    assert findings(report) == [], describe(findings(report))

    # The analysis really covered every contract with slither's full set of detectors.
    summary = re.search(r"analyzed \((\d+) contracts with (\d+) detectors\)", log)
    assert summary is not None, log
    contracts = sum(len(re.findall(r"^contract \w+", p.read_text(), re.M)) for p in ANALYSED)
    assert int(summary.group(1)) == contracts >= 1
    assert int(summary.group(2)) >= 80


def test_config_excludes_only_the_documented_detector() -> None:
    config = json.loads(CONFIG.read_text())
    assert config == {
        "detectors_to_exclude": EXCLUDED_DETECTORS,
        "solc": "solc",
        "solc_standard_json": True,
    }
    assert f"`{EXCLUDED_DETECTORS}`" in (REPO_ROOT / "contracts" / "README.md").read_text()


@pytest.mark.parametrize("path", ANALYSED, ids=lambda p: p.name)
def test_every_suppression_names_its_detector_and_reason(path: Path) -> None:
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if "slither-disable" not in line:
            continue
        match = SUPPRESSION.match(line)
        assert match is not None, (
            f"{path.name}:{number}: use `// slither-disable-next-line <detector>: <reason>`"
        )
        assert "all" not in match.group(1).split(","), f"{path.name}:{number}: name the detector"
        assert len(match.group(2).split()) >= 4, f"{path.name}:{number}: give the reason"


@pytest.mark.slow
def test_each_suppression_hides_a_real_finding(tmp_path: Path) -> None:
    """Without its annotations the contract shows exactly the annotated findings.

    So every annotation is still needed, names the right detector and line, and the analysis
    (compiler wrapper included) would report a new finding of the same kind.
    """
    (tmp_path / "contracts").mkdir()
    shutil.copy(CONFIG, tmp_path / "contracts" / CONFIG.name)
    expected: set[tuple[str, str, int]] = set()
    for path in ANALYSED:
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if not SUPPRESSION.match(line)]
        (tmp_path / "contracts" / path.name).write_text("".join(kept))
        for line_number, check, _ in suppressions(path):
            removed_before = sum(1 for line in lines[: line_number - 1] if SUPPRESSION.match(line))
            expected.add((check, path.name, line_number - removed_before))
    assert expected, "no suppressions to check"

    report, _ = run_slither(tmp_path, tmp_path / "slither.json")
    found = findings(report)
    for check, name, line in expected:
        assert any(f["check"] == check and (name, line) in finding_lines(f) for f in found), (
            f"no {check} finding at {name}:{line}:\n{describe(found)}"
        )
    unexplained = [
        f
        for f in found
        if not any(
            f["check"] == check and (name, line) in finding_lines(f)
            for check, name, line in expected
        )
    ]
    assert unexplained == [], describe(unexplained)


def test_solc_wrapper_is_the_pinned_compiler_and_stays_inside_allowed_paths(
    tmp_path: Path,
) -> None:
    node = node_binary()
    package = json.loads((REPO_ROOT / "package.json").read_text())
    version = subprocess.run(
        [node, str(SOLC_WRAPPER), "--version"], capture_output=True, text=True, check=True
    )
    assert f"Version: {package['devDependencies']['solc']}+commit." in version.stdout

    outside = tmp_path / "outside.sol"
    outside.write_text("// SPDX-License-Identifier: Apache-2.0\npragma solidity 0.8.37;\n")
    (tmp_path / "project").mkdir()
    request = {"language": "Solidity", "sources": {"x.sol": {"urls": [str(outside)]}}}
    result = subprocess.run(
        [node, str(SOLC_WRAPPER), "--standard-json", "--allow-paths", str(tmp_path / "project")],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path / "project",
    )
    (error,) = json.loads(result.stdout)["errors"]
    assert error["severity"] == "error"
    assert "outside the allowed paths" in error["message"]

    refused = subprocess.run(
        [node, str(SOLC_WRAPPER), "--combined-json", "abi"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode == 2
    assert "unsupported argument: --combined-json" in refused.stderr
