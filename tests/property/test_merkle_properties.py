"""RFC 6962 Merkle trees (SPEC §5): every path of every tree size 1..64 verifies, and
no altered path does."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aeamc.shared import merkle
from aeamc.shared.errors import ProofError


def _leaves(n: int) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(4, "little")).digest() for i in range(n)]


def _reference_root(leaves: list[bytes]) -> bytes:
    """RFC 6962 §2.1 as written: recursive split at the largest power of two below n."""
    if len(leaves) == 1:
        return merkle.leaf_hash(leaves[0])
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return merkle.node_hash(_reference_root(leaves[:k]), _reference_root(leaves[k:]))


@pytest.mark.parametrize("n", range(1, 65))
def test_every_path_verifies_and_every_alteration_fails(n: int) -> None:
    leaves = _leaves(n)
    root = merkle.root(leaves)
    assert root == _reference_root(leaves)
    for i in range(n):
        path = merkle.audit_path(leaves, i)
        assert merkle.root_from_path(leaves[i], i, n, path) == root
        for j in range(len(path)):
            for flip in (0, 31):
                altered = list(path)
                b = bytearray(altered[j])
                b[flip] ^= 0x01
                altered[j] = bytes(b)
                with pytest.raises(ProofError):
                    merkle.verify_path(leaves[i], i, n, altered, root)
        if path:
            with pytest.raises(ProofError):
                merkle.verify_path(leaves[i], i, n, path[:-1], root)
        with pytest.raises(ProofError):
            merkle.verify_path(leaves[i], i, n, [*path, bytes(32)], root)
        if n > 1:
            with pytest.raises(ProofError):
                merkle.verify_path(leaves[i], (i + 1) % n, n, path, root)


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=70), st.data())
def test_random_trees(leaves: list[bytes], data: st.DataObject) -> None:
    i = data.draw(st.integers(0, len(leaves) - 1))
    path = merkle.audit_path(leaves, i)
    merkle.verify_path(leaves[i], i, len(leaves), path, merkle.root(leaves))
    assert merkle.root(leaves) == _reference_root(leaves)


def test_edges() -> None:
    assert merkle.root([]) == hashlib.sha256(b"").digest()
    with pytest.raises(IndexError):
        merkle.audit_path([b"a"], 1)
    with pytest.raises(ProofError, match="outside"):
        merkle.root_from_path(b"a", 2, 2, [])
    with pytest.raises(ProofError, match="32 bytes"):
        merkle.root_from_path(b"a", 0, 2, [b"short"])
    # A leaf can never be presented as an interior node (domain separation).
    assert merkle.leaf_hash(b"x") != hashlib.sha256(b"x").digest()
