"""The benchmark harness runs (on a tiny size) and writes well-formed results. No timing
is asserted here: performance is judged by `make bench` as ratios within one run."""

from __future__ import annotations

import json
from pathlib import Path

from bench import run


def test_harness_writes_results_and_table(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    assert run.main(["--quick", "--out", str(tmp_path), "--doc", str(doc)]) == 0
    (result_file,) = tmp_path.glob("*.json")
    result = json.loads(result_file.read_text())
    gas = result["anchoring_gas"]
    assert gas["roots"] == 3
    assert set(gas["gas_per_anchor_tx"]) == {"MicroblockAnchor", "BareAnchor", "Seed"}
    assert gas["ratio_to_bare"]["BareAnchor"] == 1.0
    assert "| MicroblockAnchor |" in doc.read_text()
