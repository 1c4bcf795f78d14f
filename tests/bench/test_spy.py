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


def test_stages_are_microseconds_per_request_by_where_the_innermost_frame_lies(
    tmp_path: Path,
) -> None:
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    loop = "main (a.py:1);run (asyncio/events.py:80)"
    thread = "Thread._bootstrap (threading.py:1002);Thread.run (threading.py:982)"
    first.write_text(
        f"{loop};SSLObject.read (ssl.py:921) 20\n"
        f"{loop};decode_poa (coordinator/wire.py:156) 10\n"
        f"{loop};heartbeat (coordinator/heartbeats.py:109) 4\n"
        f"{loop};EpollSelector.select (selectors.py:468) 900\n"
        f"{thread};Database._commit_jobs (coordinator/db.py:272) 30\n"
        f"{thread};Database._run_writer (coordinator/db.py:223) 800\n"
        f"{thread};crypto_sign_open (nacl/bindings/crypto_sign.py:140) 6\n"
    )
    second.write_text(f"{loop};SSLObject.write (ssl.py:930) 20\n")
    # 200 samples per second: one sample is 5,000 µs, over 100 requests 50 µs each.
    table = spy.stages([first, second, tmp_path / "missing.txt"], requests=100)
    assert table == {
        "TLS": {"loop": 2000.0, "threads": 0.0},
        "SQLite transaction control (mostly COMMIT's fsync, GIL released)": {
            "loop": 0.0,
            "threads": 1500.0,
        },
        "decoding, schema, canonical form": {"loop": 500.0, "threads": 0.0},
        "Ed25519": {"loop": 0.0, "threads": 300.0},
        "coordinator logic": {"loop": 200.0, "threads": 0.0},
    }
    text = spy.render_stages(table)
    assert "| TLS | 2000 | 0 |" in text and "| **all** | **2700** | **1800** |" in text
