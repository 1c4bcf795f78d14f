"""Microblock decoding refuses each kind of malformed block with a precise reason."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import pytest

from aeamc.shared import microblock
from aeamc.shared.errors import MicroblockError


def _raw(vectors: dict[str, Any], i: int = 1) -> bytes:
    b = vectors["microblocks"][i]
    return bytes.fromhex(b["header"] + b["payload"])


def _rehash(raw: bytes) -> bytes:
    """Fix the payload hash after editing the payload, to reach the deeper checks."""
    payload = raw[microblock.HEADER_SIZE :]
    return raw[:21] + hashlib.sha256(payload).digest() + raw[53:]


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda r: b"\x00" + r[1:], "bad magic"),
        (lambda r: r[:4] + b"\x02" + r[5:], "unknown version 2"),
        (lambda r: r[:50], "truncated header"),
        (lambda r: r + b"\x00", "payload hash does not match"),
        (lambda r: r[:-1], "truncated signature"),
        (lambda r: _rehash(r + b"\x01"), "trailing bytes"),
        (lambda r: _rehash(r[:-1]), "truncated signature"),
        (lambda r: r[:81] + struct.pack("<H", 3) + r[83:], "count mismatch"),
        (lambda r: r[:81] + struct.pack("<H", 1) + r[83:], "trailing bytes"),
        (lambda r: _rehash(r[:83] + b"\x00" + r[84:]), "empty task_id"),
        (lambda r: _rehash(r[:83] + b"\x06\xff\xfe" + r[86:]), "not UTF-8"),
        (lambda r: _rehash(r[:83] + b"\xff" + r[84:]), "truncated task_id"),
    ],
)
def test_rejections(vectors: dict[str, Any], edit: Any, reason: str) -> None:
    with pytest.raises(MicroblockError, match=reason):
        microblock.decode(edit(_raw(vectors)))


def test_build_refuses_bad_input() -> None:
    r = microblock.Receipt("t", "d" * 32, bytes(64))
    kw: dict[str, Any] = {"cluster_id": 1, "timestamp": 1, "previous_hash": bytes(32)}
    with pytest.raises(MicroblockError, match="twice"):
        microblock.build_block(**kw, receipts=[r, r])
    with pytest.raises(MicroblockError, match="u32"):
        microblock.build_block(**{**kw, "cluster_id": 2**32}, receipts=[r])
    with pytest.raises(MicroblockError, match="u64"):
        microblock.build_block(**{**kw, "timestamp": -1}, receipts=[r])
    with pytest.raises(MicroblockError, match="previous_hash"):
        microblock.build_block(**{**kw, "previous_hash": b""}, receipts=[r])
    with pytest.raises(MicroblockError, match="64 bytes"):
        microblock.build_block(**kw, receipts=[microblock.Receipt("t", "d", b"x")])
    with pytest.raises(MicroblockError, match=r"1\.\.255"):
        microblock.build_block(**kw, receipts=[microblock.Receipt("t" * 256, "d", bytes(64))])


def test_empty_block_is_well_formed() -> None:
    block = microblock.build_block(cluster_id=0, timestamp=0, previous_hash=bytes(32), receipts=[])
    assert len(block.to_bytes()) == microblock.HEADER_SIZE
    assert microblock.decode(block.to_bytes()) == block


def test_chain_links_are_checked(vectors: dict[str, Any]) -> None:
    first = microblock.decode(_raw(vectors, 0))
    orphan = microblock.build_block(cluster_id=7, timestamp=2, previous_hash=bytes(32), receipts=[])
    with pytest.raises(MicroblockError, match="does not link"):
        microblock.verify_chain([first, orphan])


def test_json_view(vectors: dict[str, Any]) -> None:
    view = microblock.decode(_raw(vectors, 0)).to_json()
    assert view["block_hash"] == vectors["microblocks"][0]["block_hash"]
    assert view["header"]["magic"] == "0xaeaeaeae"
    assert view["header"]["cluster_id"] == 7
    assert view["receipts"][0]["task_id"] == "t-0001"
