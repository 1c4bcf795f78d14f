"""The sampling-profile summary: loop thread and worker threads apart, waiting left out."""

from __future__ import annotations

from pathlib import Path

from bench import spy


def test_summary_splits_threads_and_drops_waiting(tmp_path: Path) -> None:
    raw = tmp_path / "fleet.txt"
    raw.write_text(
        "main (a.py:1);run (b.py:2);parse (m.py:3) 30\n"
        "main (a.py:1);run (b.py:2);send (s.py:4) 10\n"
        "main (a.py:1);EpollSelector.select (selectors.py:468) 500\n"
        "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982);sqlite (d.py:9) 40\n"
        "Thread._bootstrap (threading.py:1002);Condition.wait (threading.py:327) 700\n"
        "\n"
    )
    s = spy.summarize(raw, seconds=1.0)
    assert (s.loop_samples, s.thread_samples) == (40, 40)
    assert s.loop_top == [(0.75, "parse (m.py:3)"), (0.25, "send (s.py:4)")]
    assert s.loop_busy == 40 / spy.RATE_HZ
    assert "event loop busy 20%" in spy.render(s)
