"""`aeamc inspect microblock`, run as users run it: a separate process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

AEAMC = [sys.executable, "-m", "aeamc.shared.cli"]


def run(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*AEAMC, *args], input=stdin, capture_output=True, timeout=60, check=False
    )


@pytest.mark.parametrize("index", [0, 1])
def test_decodes_vector_blocks(vectors: dict[str, Any], tmp_path: Path, index: int) -> None:
    b = vectors["microblocks"][index]
    path = tmp_path / "block.bin"
    path.write_bytes(bytes.fromhex(b["header"] + b["payload"]))
    proc = run("inspect", "microblock", str(path))
    assert proc.returncode == 0, proc.stderr
    view = json.loads(proc.stdout)
    assert view["block_hash"] == b["block_hash"]
    assert view["header"]["receipt_count"] == index + 1
    assert [r["task_id"] for r in view["receipts"]] == (
        ["t-0001"] if index == 0 else ["t-0002", "t-0001"]
    )


def test_reads_stdin_and_hex(vectors: dict[str, Any]) -> None:
    b = vectors["microblocks"][0]
    raw = bytes.fromhex(b["header"] + b["payload"])
    assert (
        json.loads(run("inspect", "microblock", "-", stdin=raw).stdout)["block_hash"]
        == b["block_hash"]
    )
    proc = run(
        "inspect", "microblock", "--hex", "-", stdin=(b["header"] + b["payload"] + "\n").encode()
    )
    assert json.loads(proc.stdout)["block_hash"] == b["block_hash"]


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda r: b"\x00" * 4 + r[4:], "bad magic 0x00000000"),
        (lambda r: r[:-3], "truncated signature"),
        (lambda r: r + b"\x00", "payload hash does not match"),
        (lambda r: r[:10], "truncated header"),
    ],
)
def test_refuses_corrupted_blocks(vectors: dict[str, Any], corrupt: Any, reason: str) -> None:
    b = vectors["microblocks"][1]
    proc = run(
        "inspect", "microblock", "-", stdin=corrupt(bytes.fromhex(b["header"] + b["payload"]))
    )
    assert proc.returncode == 1
    assert proc.stdout == b""
    lines = proc.stderr.decode().strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("aeamc: invalid microblock: ")
    assert reason in lines[0]


def test_usage_and_missing_file_errors(tmp_path: Path) -> None:
    assert run().returncode == 64
    assert run("inspect", "nothing").returncode == 64
    missing = run("inspect", "microblock", str(tmp_path / "absent"))
    assert missing.returncode == 66
    assert b"cannot read" in missing.stderr
    bad_hex = run("inspect", "microblock", "--hex", "-", stdin=b"xyz")
    assert bad_hex.returncode == 1 and b"not hex" in bad_hex.stderr
    version = run("--version")
    assert version.returncode == 0 and version.stdout.startswith(b"aeamc ")
