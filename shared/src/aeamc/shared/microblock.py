"""The v1 microblock byte format (SPEC §6).

A decoder accepts exactly one byte string per block: anything that does not parse
exactly (bad magic, unknown version, truncation, trailing bytes, count mismatch, payload
hash) is refused, so two parties holding the same hash hold the same block.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

from .errors import MicroblockError

MAGIC = 0xAEAEAEAE
VERSION = 1
HEADER_FORMAT = "<IBIQ32s32sH"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)  # 83
SIGNATURE_SIZE = 64
MAX_RECEIPTS = 0xFFFF
GENESIS_PREVIOUS = bytes(32)

assert HEADER_SIZE == 83
#: The one-byte length prefixes, made once: a block encodes up to 131,070 of them.
_LENGTH = [bytes([n]) for n in range(256)]


@dataclass(frozen=True, slots=True)
class Receipt:
    """A verified PoT as it is committed: who did which task, and its signature."""

    task_id: str
    device_id: str
    signature: bytes

    def encode(self) -> bytes:
        return b"".join(self._parts())

    def _parts(self) -> tuple[bytes, bytes, bytes, bytes, bytes]:
        task = self.task_id.encode()
        device = self.device_id.encode()
        if not 0 < len(task) <= 255 or not 0 < len(device) <= 255:
            raise MicroblockError("task_id and device_id must be 1..255 bytes")
        if len(self.signature) != SIGNATURE_SIZE:
            raise MicroblockError("a receipt signature is 64 bytes")
        return _LENGTH[len(task)], task, _LENGTH[len(device)], device, self.signature

    @property
    def key(self) -> tuple[str, str]:
        return (self.task_id, self.device_id)


@dataclass(frozen=True, slots=True)
class Header:
    cluster_id: int
    timestamp: int
    payload_hash: bytes
    previous_hash: bytes
    receipt_count: int
    magic: int = MAGIC
    version: int = VERSION

    def encode(self) -> bytes:
        return struct.pack(
            HEADER_FORMAT,
            self.magic,
            self.version,
            self.cluster_id,
            self.timestamp,
            self.payload_hash,
            self.previous_hash,
            self.receipt_count,
        )

    @property
    def block_hash(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()


@dataclass(frozen=True, slots=True)
class Microblock:
    header: Header
    receipts: tuple[Receipt, ...]
    #: The encoded receipts when already known (``build_block`` has them): encoding a
    #: block of 65,535 receipts twice is measurable.
    encoded_payload: bytes | None = field(default=None, compare=False, repr=False)

    @property
    def block_hash(self) -> bytes:
        return self.header.block_hash

    @property
    def payload(self) -> bytes:
        if self.encoded_payload is not None:
            return self.encoded_payload
        return encode_payload(self.receipts)

    def to_bytes(self) -> bytes:
        return self.header.encode() + self.payload

    def to_json(self) -> dict[str, object]:
        """A human- and machine-readable view (``aeamc inspect microblock``)."""
        h = self.header
        return {
            "block_hash": self.block_hash.hex(),
            "header": {
                "magic": f"0x{h.magic:08x}",
                "version": h.version,
                "cluster_id": h.cluster_id,
                "timestamp": h.timestamp,
                "payload_hash": h.payload_hash.hex(),
                "previous_hash": h.previous_hash.hex(),
                "receipt_count": h.receipt_count,
            },
            "receipts": [
                {"task_id": r.task_id, "device_id": r.device_id, "signature": r.signature.hex()}
                for r in self.receipts
            ],
        }


def encode_payload(receipts: Sequence[Receipt]) -> bytes:
    # One join over every receipt's parts: no intermediate bytes object per receipt.
    parts: list[bytes] = []
    extend = parts.extend
    for r in receipts:
        extend(r._parts())
    return b"".join(parts)


def build_block(
    *,
    cluster_id: int,
    timestamp: int,
    previous_hash: bytes,
    receipts: Sequence[Receipt],
) -> Microblock:
    """Assemble the next block; refuses a repeated (task, device) within the block."""
    if not 0 <= cluster_id <= 0xFFFFFFFF:
        raise MicroblockError("cluster_id must fit in u32")
    if not 0 <= timestamp <= 0xFFFFFFFFFFFFFFFF:
        raise MicroblockError("timestamp must fit in u64")
    if len(previous_hash) != 32:
        raise MicroblockError("previous_hash must be 32 bytes")
    if len(receipts) > MAX_RECEIPTS:
        raise MicroblockError(f"at most {MAX_RECEIPTS} receipts per block")
    keys = {(r.task_id, r.device_id) for r in receipts}
    if len(keys) != len(receipts):
        raise MicroblockError("a receipt appears twice in the block")
    payload = encode_payload(receipts)
    header = Header(
        cluster_id=cluster_id,
        timestamp=timestamp,
        payload_hash=hashlib.sha256(payload).digest(),
        previous_hash=previous_hash,
        receipt_count=len(receipts),
    )
    return Microblock(header, tuple(receipts), payload)


def decode_header(data: bytes) -> Header:
    """Parse the 83-byte header alone (magic and version checked)."""
    if len(data) < HEADER_SIZE:
        raise MicroblockError(f"truncated header: {len(data)} of {HEADER_SIZE} bytes")
    magic, version, cluster, ts, payload_hash, prev, count = struct.unpack_from(HEADER_FORMAT, data)
    if magic != MAGIC:
        raise MicroblockError(f"bad magic 0x{magic:08x}, expected 0x{MAGIC:08x}")
    if version != VERSION:
        raise MicroblockError(f"unknown version {version}")
    return Header(cluster, ts, payload_hash, prev, count, magic, version)


def decode_payload(payload: bytes, receipt_count: int) -> tuple[Receipt, ...]:
    receipts = []
    pos = 0
    end = len(payload)
    for n in range(receipt_count):
        task_id, pos = _take_str(payload, pos, end, n, "task_id")
        device_id, pos = _take_str(payload, pos, end, n, "device_id")
        if pos + SIGNATURE_SIZE > end:
            raise MicroblockError(f"receipt {n}: truncated signature")
        receipts.append(Receipt(task_id, device_id, payload[pos : pos + SIGNATURE_SIZE]))
        pos += SIGNATURE_SIZE
    if pos != end:
        raise MicroblockError(
            f"{end - pos} trailing bytes after {receipt_count} receipts (count mismatch)"
        )
    return tuple(receipts)


def _take_str(buf: bytes, pos: int, end: int, n: int, what: str) -> tuple[str, int]:
    if pos >= end:
        raise MicroblockError(f"receipt {n}: truncated before {what} (count mismatch)")
    length = buf[pos]
    pos += 1
    if length == 0:
        raise MicroblockError(f"receipt {n}: empty {what}")
    if pos + length > end:
        raise MicroblockError(f"receipt {n}: truncated {what}")
    try:
        value = buf[pos : pos + length].decode("utf-8")
    except UnicodeDecodeError:
        raise MicroblockError(f"receipt {n}: {what} is not UTF-8") from None
    return value, pos + length


def decode(data: bytes) -> Microblock:
    """Parse a whole block, verifying the payload hash; raises ``MicroblockError``."""
    data = bytes(data)
    header = decode_header(data)
    payload = data[HEADER_SIZE:]
    if hashlib.sha256(payload).digest() != header.payload_hash:
        # Checked before the receipts so a payload of the wrong length reports what a
        # reader cares about: these are not the bytes the header commits to.
        receipts_try = _try_count(payload, header.receipt_count)
        raise MicroblockError(receipts_try or "payload hash does not match the header")
    return Microblock(header, decode_payload(payload, header.receipt_count), payload)


def _try_count(payload: bytes, count: int) -> str | None:
    try:
        decode_payload(payload, count)
    except MicroblockError as exc:
        return f"{exc}; payload hash does not match the header"
    return None


def verify_chain(blocks: Sequence[Microblock], genesis_previous: bytes = GENESIS_PREVIOUS) -> None:
    """Check the hash links from genesis and that no receipt repeats across blocks."""
    previous = genesis_previous
    seen: set[tuple[str, str]] = set()
    for height, block in enumerate(blocks):
        if block.header.previous_hash != previous:
            raise MicroblockError(f"block {height} does not link to block {height - 1}")
        for r in block.receipts:
            if r.key in seen:
                raise MicroblockError(f"block {height} repeats receipt {r.task_id}/{r.device_id}")
            seen.add(r.key)
        previous = block.block_hash
