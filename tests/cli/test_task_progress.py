"""The progress line of ``aeamc task submit --wait``: stage and chunks done of a task's
view, one line rewritten in place, a bar that never goes back and is full only once the
result is verified."""

from __future__ import annotations

import re
from typing import Any

import pytest

from aeamc.shared.taskcli import BAR_CELLS, chunks_done, render_bar

DEVICE, OTHER = "3f9a0c12" + "0" * 24, "77aa00bb" + "1" * 24


def view(
    *assignments: tuple[str, str, int | None],
    chunks: int = 64,
    proofs: int = 0,
    verified: bool = False,
) -> dict[str, Any]:
    """A task view as ``GET /v1/tasks/{id}`` answers, with (device, state, chunks done)
    assignments."""
    return {
        "task_id": "t-1",
        "chunks": chunks,
        "state": "completed" if proofs else ("running" if assignments else "queued"),
        "assignments": [
            {"device_id": d, "state": s, "chunks_done": n, "reason": None}
            for d, s, n in assignments
        ],
        "proofs": [{"device_id": DEVICE}] * proofs,
        "verification": {"state": "verified" if verified else "unverified"},
    }


def cells(line: str) -> int:
    bar = re.search(r"\[([#.]+)\]", line)
    assert bar is not None and len(bar.group(1)) == BAR_CELLS, line
    return bar.group(1).count("#")


def test_a_running_task_shows_its_chunks_done() -> None:
    line = render_bar(view((DEVICE, "accepted", 27)), 41.66)
    assert line == "\r[########............] running   27/64 chunks on 3f9a0c12   41.7 s\x1b[K"
    assert "\n" not in line


@pytest.mark.parametrize(
    ("task", "count", "filled"),
    [
        (view(), " 0/64 chunks", 0),  # queued: no device holds it, nothing is done
        (view((DEVICE, "offered", None)), " 0/64 chunks", 0),  # offered, not yet taken
        (view((DEVICE, "accepted", None)), " ?/64 chunks", 1),  # taken, not yet reported
        (view((DEVICE, "accepted", 0)), " 0/64 chunks", 1),
        (view((DEVICE, "accepted", 32)), "32/64 chunks", 10),
        (view((DEVICE, "accepted", 64)), "64/64 chunks", BAR_CELLS - 1),
        (view((DEVICE, "proved", 64), proofs=1), "64/64 chunks", BAR_CELLS - 1),
        (view((DEVICE, "proved", 64), proofs=1, verified=True), "64/64 chunks", BAR_CELLS),
    ],
)
def test_the_count_and_the_bar_at_each_stage(task: dict[str, Any], count: str, filled: int) -> None:
    line = render_bar(task, 1.0)
    assert f" {count}" in line and cells(line) == filled


def test_the_furthest_live_device_counts() -> None:
    """Of replicas, the one furthest along; an assignment that ended counts for nothing."""
    both = view((DEVICE, "accepted", 5), (OTHER, "accepted", 12))
    assert chunks_done(both) == 12 and "12/64" in render_bar(both, 0.0)
    assert "on 3f9a0c12, 77aa00bb" in render_bar(both, 0.0)
    ended = view((OTHER, "expired", None), (DEVICE, "accepted", 3))
    assert chunks_done(ended) == 3 and "77aa00bb" not in render_bar(ended, 0.0)
    # A count above the task's chunks (never sent by a coordinator) is held to them.
    assert chunks_done(view((DEVICE, "accepted", 99), chunks=8)) == 8


def test_the_bar_never_goes_back_and_is_full_only_when_verified() -> None:
    life = [
        view(chunks=8),
        view((DEVICE, "offered", None), chunks=8),
        view((DEVICE, "accepted", None), chunks=8),
        *(view((DEVICE, "accepted", n), chunks=8) for n in range(9)),
        view((DEVICE, "proved", 8), chunks=8, proofs=1),
        view((DEVICE, "proved", 8), chunks=8, proofs=1, verified=True),
    ]
    filled = [cells(render_bar(v, 0.0)) for v in life]
    assert filled == sorted(filled) and filled[0] == 0
    assert filled[-1] == BAR_CELLS and all(n < BAR_CELLS for n in filled[:-1])
    # Every line is as wide as the first: no part of a longer one is left behind.
    widths = {len(render_bar(v, 0.0)) for v in life[2:-1]}
    assert len(widths) == 1
