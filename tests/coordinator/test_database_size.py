"""``aeamc_coordinator_database_size_bytes``: the SQLite file plus its write-ahead log."""

from __future__ import annotations

from pathlib import Path

from aeamc.coordinator.db import Database


def test_database_size_counts_the_file_and_its_wal(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.db"
    db = Database(path)  # never opened: only its files are measured
    assert db.size_bytes() == 0
    path.write_bytes(b"x" * 4096)
    assert db.size_bytes() == 4096
    (tmp_path / "coordinator.db-wal").write_bytes(b"x" * 1000)
    (tmp_path / "coordinator.db-shm").write_bytes(b"x" * 32768)  # an index, not data
    (tmp_path / "other.db").write_bytes(b"x" * 7)
    assert db.size_bytes() == 5096
