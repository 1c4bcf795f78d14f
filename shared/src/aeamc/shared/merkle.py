"""RFC 6962 §2.1 Merkle trees (SPEC §5): the trace root of a task and the anchor root.

Leaves and interior nodes are domain-separated (0x00 / 0x01) so no interior node can be
passed off as a leaf (the second-preimage attack on naive Merkle trees).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from .errors import ProofError

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly below ``n`` (n ≥ 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def root(leaves: Sequence[bytes]) -> bytes:
    """Merkle tree hash of the leaf data ``leaves`` (not pre-hashed)."""
    if not leaves:
        return EMPTY_ROOT
    level = [leaf_hash(d) for d in leaves]
    # Iterative form of RFC 6962's recursion: pairing left to right and promoting an odd
    # last node unchanged yields the same tree as splitting at the largest power of two.
    while len(level) > 1:
        nxt = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def audit_path(leaves: Sequence[bytes], index: int) -> list[bytes]:
    """Sibling hashes from the leaf at ``index`` up to the root (bottom-up)."""
    if not 0 <= index < len(leaves):
        raise IndexError(f"leaf {index} outside a tree of {len(leaves)}")
    path: list[bytes] = []
    level = [leaf_hash(d) for d in leaves]
    i = index
    while len(level) > 1:
        sibling = i ^ 1
        if sibling < len(level):
            path.append(level[sibling])
        nxt = [node_hash(level[j], level[j + 1]) for j in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
        i //= 2
    return path


def root_from_path(leaf: bytes, index: int, tree_size: int, path: Sequence[bytes]) -> bytes:
    """Recompute the root from leaf data and its audit path (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < tree_size:
        raise ProofError(f"leaf index {index} outside a tree of {tree_size}")
    fn, sn = index, tree_size - 1
    r = leaf_hash(leaf)
    for p in path:
        if len(p) != 32:
            raise ProofError("audit path element is not 32 bytes")
        if sn == 0:
            raise ProofError("audit path is longer than the tree is deep")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("audit path is shorter than the tree is deep")
    return r


def verify_path(
    leaf: bytes, index: int, tree_size: int, path: Sequence[bytes], expected_root: bytes
) -> None:
    if root_from_path(leaf, index, tree_size, path) != expected_root:
        raise ProofError("audit path does not lead to the expected root")
