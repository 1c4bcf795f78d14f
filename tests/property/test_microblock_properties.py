"""Property tests of the microblock codec (SPEC §6): exact round-trips, strict rejection."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aeamc.shared import microblock
from aeamc.shared.errors import MicroblockError

task_ids = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=40
).filter(lambda s: len(s.encode()) <= 255)
device_ids = st.binary(min_size=16, max_size=16).map(bytes.hex)
receipts = st.lists(
    st.builds(microblock.Receipt, task_ids, device_ids, st.binary(min_size=64, max_size=64)),
    max_size=12,
    unique_by=lambda r: r.key,
)
blocks = st.builds(
    lambda cluster, ts, prev, rs: microblock.build_block(
        cluster_id=cluster, timestamp=ts, previous_hash=prev, receipts=rs
    ),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**64 - 1),
    st.binary(min_size=32, max_size=32),
    receipts,
)


@given(blocks)
def test_encode_decode_roundtrip(block: microblock.Microblock) -> None:
    raw = block.to_bytes()
    decoded = microblock.decode(raw)
    assert decoded == block
    assert decoded.to_bytes() == raw
    assert decoded.block_hash == block.block_hash


@given(blocks, st.data())
def test_truncation_is_rejected(block: microblock.Microblock, data: st.DataObject) -> None:
    raw = block.to_bytes()
    cut = data.draw(st.integers(0, len(raw) - 1))
    try:
        microblock.decode(raw[:cut])
    except MicroblockError:
        return
    raise AssertionError(f"truncated block of {cut} bytes was accepted")


@given(blocks, st.binary(min_size=1, max_size=80))
def test_extension_is_rejected(block: microblock.Microblock, extra: bytes) -> None:
    try:
        microblock.decode(block.to_bytes() + extra)
    except MicroblockError:
        return
    raise AssertionError("extended block was accepted")


@settings(max_examples=300)
@given(blocks, st.data())
def test_single_byte_change_is_rejected_or_changes_the_hash(
    block: microblock.Microblock, data: st.DataObject
) -> None:
    raw = bytearray(block.to_bytes())
    pos = data.draw(st.integers(0, len(raw) - 1))
    delta = data.draw(st.integers(1, 255))
    raw[pos] = (raw[pos] + delta) % 256
    try:
        decoded = microblock.decode(bytes(raw))
    except MicroblockError:
        return
    assert decoded.block_hash != block.block_hash


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_crash(raw: bytes) -> None:
    try:
        block = microblock.decode(raw)
    except MicroblockError:
        return
    assert block.to_bytes() == raw
