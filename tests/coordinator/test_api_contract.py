"""The served ``/v1/openapi.json`` is a faithful contract of the coordinator's API.

The document must be valid OpenAPI 3.1, and schemathesis, run against a real coordinator
over its real TLS with the operator token, must find nothing: every phase (examples,
coverage, fuzzing, stateful) and every check. A request the schema calls valid is not
refused for its form, one it calls invalid is not accepted, every answer's status,
media type, headers and body are documented, and a 405's ``Allow`` lists the methods
the path really has.

Hooks (``contract_hooks.py``) keep two protocol rules JSON Schema cannot state; nothing
is excluded. The run is seeded and derandomized, so it is the same run every time.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import OpenAPIV31SpecValidator

from tests.support.coordinator import CoordinatorProcess, env_without_coverage, running_coordinator

REPO = Path(__file__).resolve().parents[2]
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
#: Test cases per operation and phase: enough to reach every branch the schema describes
#: (the coverage phase adds its boundary and negative cases on top), bounded for time.
MAX_EXAMPLES = 25
SEED = 20261203

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def contract_coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    # A task's answer waits at most 2 s (server.max_wait_s), so a long poll the fuzzer
    # asks for on a task it created (the schema then says ≤ 2) stays within its timeout.
    root = tmp_path_factory.mktemp("contract") / "coord"
    with running_coordinator(root, {"server": {"max_wait_s": 2}}) as proc:
        yield proc


def test_document_is_valid_openapi_3_1(contract_coordinator: CoordinatorProcess) -> None:
    status, doc = contract_coordinator.request("GET", "/v1/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.1.")
    OpenAPIV31SpecValidator(doc).validate()


def _run_schemathesis(coord: CoordinatorProcess, report: Path) -> dict[str, Any]:
    ca = coord.state_dir / "ca" / "ca.pem"
    env = {
        **env_without_coverage(),
        "SCHEMATHESIS_HOOKS": "tests.coordinator.contract_hooks",
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p
        ),
    }
    command = [
        str(SCHEMATHESIS),
        "run",
        f"{coord.url}/v1/openapi.json",
        "--url",
        coord.url,
        "--tls-verify",
        str(ca),
        "--header",
        f"Authorization: Bearer {coord.token('operator')}",
        "--checks",
        "all",
        "--phases",
        "examples,coverage,fuzzing,stateful",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
        "--generation-deterministic",  # derandomized, and no example database
        "--workers",
        "1",
        "--no-color",
        "--report",
        "json",
        "--report-json-path",
        str(report),
    ]
    proc = subprocess.run(
        # In the test's own directory: schemathesis keeps failures there for `st replay`.
        command,
        cwd=report.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert report.exists(), proc.stdout[-5000:] + proc.stderr[-5000:]
    result: dict[str, Any] = json.loads(report.read_text())
    result["output"] = proc.stdout
    return result


def test_schemathesis_finds_nothing(
    contract_coordinator: CoordinatorProcess, tmp_path: Path
) -> None:
    result = _run_schemathesis(contract_coordinator, tmp_path / "schemathesis.json")
    output = result["output"][-20_000:]
    assert result["complete"] and result["stop_reason"] == "completed", output
    assert result["failures"] == [] and result["errors"] == [], output
    assert result["exit_code"] == 0, output
    # Every operation of the document was tested, by every phase that has cases for it.
    ops = result["operations"]
    assert ops["tested"] == ops["total"] == ops["selected"] and not ops["errored"], ops
    for phase in ("examples", "coverage", "fuzzing", "stateful"):
        assert result["phases"][phase]["status"] == "success", (phase, output)
