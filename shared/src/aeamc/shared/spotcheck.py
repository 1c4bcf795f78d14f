"""Spot-check index derivation (SPEC §2).

Indices come from the hash of the block that holds the receipt, which did not exist when
the device committed to its trace root: the device could not predict them, and the
coordinator cannot choose them. Anyone can recompute them.
"""

from __future__ import annotations

import hashlib
import struct


def challenge_seed(block_hash: bytes, task_id: str) -> bytes:
    return hashlib.sha256(block_hash + task_id.encode()).digest()


def challenge_indices(block_hash: bytes, task_id: str, k: int, chunks: int) -> list[int]:
    """The first ``min(k, chunks)`` distinct indices of the deterministic stream."""
    if chunks < 1:
        raise ValueError("a task has at least one chunk")
    # Index j of the stream is SHA-256(seed || u32le(j)); hashing the seed once and
    # copying that state per j gives the same digests at a fraction of the cost, which
    # matters when a block of tens of thousands of receipts is formed.
    base = hashlib.sha256(challenge_seed(block_hash, task_id))
    want = min(k, chunks)
    out: list[int] = []
    pack = struct.Struct("<I").pack
    j = 0
    while len(out) < want:
        h = base.copy()
        h.update(pack(j))
        idx = int.from_bytes(h.digest()[:8], "little") % chunks
        if idx not in out:
            out.append(idx)
        j += 1
    return out


def detection_probability(fake_fraction: float, k: int) -> float:
    """Chance that ``k`` distinct random openings hit at least one faked chunk (≈ 1-(1-f)^k)."""
    return 1.0 - (1.0 - fake_fraction) ** k
