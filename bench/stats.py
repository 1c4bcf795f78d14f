"""Medians, spreads and percentiles, the way every figure in the report is summarised."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return float(ordered[rank - 1])


def summary(values: Sequence[float]) -> dict[str, Any]:
    """Median and spread (min–max) of repeated runs; the raw runs are kept too."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": math.nan, "min": math.nan, "max": math.nan, "runs": []}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "runs": vals,
    }


def ratio_summary(values: Sequence[float], refs: Sequence[float]) -> dict[str, Any]:
    """Per-run ratios to the reference measured in the same run (each pair is one run)."""
    return summary([v / r if r else math.nan for v, r in zip(values, refs, strict=True)])
