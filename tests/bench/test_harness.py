"""The benchmark harness runs (on a tiny size) and writes well-formed results. No timing
is asserted here: performance is judged by `make bench` as ratios within one run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report, run, stats, wasm


def test_harness_runs_every_benchmark_and_writes_results_and_table(tmp_path: Path) -> None:
    doc = tmp_path / "performance.md"
    assert run.main(["--quick", "--out", str(tmp_path), "--doc", str(doc)]) == 0
    (result_file,) = tmp_path.glob("*-quick.json")
    r = json.loads(result_file.read_text())
    assert set(run.PLANS) <= set(r) and r["quick"] is True
    assert r["transport"].startswith("TLS 1.3")  # measured as deployed, mutual TLS
    assert r["machine"]["cores"] >= 1 and r["machine"]["versions"]["aiohttp"]
    gas = r["anchoring_gas"]
    assert set(gas["gas_per_anchor_tx"]) == {"MicroblockAnchor", "BareAnchor", "Seed"}
    assert gas["ratio_to_bare"]["BareAnchor"] == 1.0
    (block,) = [b for b in r["microblocks"]["sizes"] if b["fleet"] == "new"]
    assert block["receipts"] == 100 and block["form_ms"]["runs"]
    ing = r["ingestion"]
    assert ing["refused"] == [] and len(ing["batched_ratio"]["runs"]) == 1
    (size,) = r["fleet"]["sizes"]
    assert size["devices"] == 20 and size["errors"] == 0 and size["enroll_errors"] == 0
    assert size["accepted_per_s"] > 0 and size["loadgen_rss_mb"] > 0
    assert r["fleet"]["target_met"] is None  # 10,000 devices were not measured
    assert r["agent_footprint"]["rss_mb"]["agent"]["median"] > 0
    assert r["agent_footprint"]["rss_mb_by_process"]["daemon"]["median"] > 0
    econ = r["verification_economy"]
    assert [(s["f"], s["chunks"]) for s in econ["selection"]] == [(0.25, 32), (0.25, 64)]
    assert econ["catch_target_met"] is None  # f = 10 % was not measured
    assert [s["targets_compatible"] for s in econ["sizes"]] == [False, True]
    assert r["latency"]["tasks"] == 2
    sandbox = r["wasm_sandbox"]
    assert [k["kernel"] for k in sandbox["kernels"]] == ["mandelbrot", "matmul_int8"]
    for k in sandbox["kernels"]:
        assert k["outputs_identical"] and k["ratio"]["median"] > 0
        assert k["fuel_per_chunk"]["min"] > 0 and set(k["variants"]) == set(wasm.VARIANTS)
        assert 0 < k["reexecution"]["new_device_rate"] <= 1
    assert [o["runs"] for o in sandbox["overhead"]] == [50, 50, 50]
    assert sandbox["overhead"][0]["fuel"] > 0
    assert sandbox["reexecution_target_met"] is None  # 64-chunk tasks were not measured
    text = doc.read_text()
    assert "--quick: tiny sizes, not a measurement" in text
    for heading in (
        "## 1. Proof ingestion",
        "## 2. Fleet scale",
        "## 7. Latency",
        "## 8. WebAssembly sandbox",
    ):
        assert heading in text
    assert "| MicroblockAnchor |" in text
    assert text == report.render(r)


def test_summaries_and_percentiles() -> None:
    assert stats.percentile([5, 1, 3, 2, 4], 50) == 3
    assert stats.percentile([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 99) == 10
    s = stats.ratio_summary([10, 30, 20], [10, 10, 10])
    assert (s["median"], s["min"], s["max"]) == (2.0, 1.0, 3.0)


def test_the_sandbox_benchmark_says_why_when_it_cannot_build_the_kernels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no clang, no gcc
    with pytest.raises(RuntimeError, match="wasm_sandbox: cannot build the example kernels"):
        wasm.build(tmp_path / "kernels")
