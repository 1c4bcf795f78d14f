"""Proof-bundle verification (SPEC §8): each step passes on a real bundle and each
corruption is caught at the right step."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from aeamc.shared import bundle as bundles
from aeamc.shared import merkle, microblock
from aeamc.shared.messages import PoT, parse

CONTRACT = "0x" + "11" * 20


def _bundle(vectors: dict[str, Any]) -> dict[str, Any]:
    """t-0001's receipt in vector block 0, anchored with blocks 1 and 2 (vector root)."""
    b = vectors["microblocks"][0]
    hashes = [bytes.fromhex(h) for h in vectors["anchor"]["block_hashes"]]
    pot = parse(PoT, vectors["task_sha256_chain"]["pot"])
    block = microblock.decode(bytes.fromhex(b["header"] + b["payload"]))
    anchor = {
        "root": merkle.root(hashes).hex(),
        "leaf_index": 0,
        "tree_size": 3,
        "path": [p.hex() for p in merkle.audit_path(hashes, 0)],
        "chain_id": 31337,
        "contract": CONTRACT,
        "tx_hash": "0x" + "ab" * 32,
        "block_number": 12,
    }
    return bundles.build_bundle(
        pot, bytes.fromhex(vectors["identity"]["public_key"]), block, anchor
    )


class FakeChain:
    """Stands in for the chain at the one edge this pure module cannot reach."""

    def __init__(self, anchored: set[bytes]) -> None:
        self.anchored = anchored
        self.calls: list[tuple[bytes, int, str]] = []

    def __call__(self, root: bytes, chain_id: int, contract: str) -> bundles.OnChainAnchor:
        self.calls.append((root, chain_id, contract))
        if root in self.anchored:
            return bundles.OnChainAnchor(True, 1_764_300_100, 12)
        return bundles.OnChainAnchor(False, 0, 0)


def test_valid_bundle_passes_every_step(vectors: dict[str, Any]) -> None:
    b = _bundle(vectors)
    chain = FakeChain({bytes.fromhex(vectors["anchor"]["root"])})
    steps = bundles.verify_bundle(b, chain)
    assert [s.name for s in steps] == list(bundles.STEPS)
    assert all(s.ok for s in steps)
    assert chain.calls == [(bytes.fromhex(vectors["anchor"]["root"]), 31337, CONTRACT)]


def test_without_chain_check_the_last_step_is_absent(vectors: dict[str, Any]) -> None:
    steps = bundles.verify_bundle(_bundle(vectors), None)
    assert [s.name for s in steps] == list(bundles.STEPS[:-1])


def _flip_hex(value: str, pos: int = 0) -> str:
    c = value[pos]
    return value[:pos] + ("1" if c == "0" else "0") + value[pos + 1 :]


@pytest.mark.parametrize(
    ("edit", "step"),
    [
        (lambda b: b.pop("anchor"), "bundle"),
        (lambda b: b["pot"].update(type="poa"), "bundle"),
        (lambda b: b.update(microblock="zz"), "bundle"),
        (
            lambda b: b.update(device_public_key=_flip_hex(b["device_public_key"])),
            "key matches device_id",
        ),
        (lambda b: b["pot"].update(timestamp=b["pot"]["timestamp"] + 1), "PoT signature"),
        (lambda b: b["pot"].update(signature=_flip_hex(b["pot"]["signature"])), "PoT signature"),
        # Change the receipt's signature byte inside the block payload.
        (
            lambda b: b.update(microblock=_flip_hex(b["microblock"], len(b["microblock"]) - 2)),
            "receipt in microblock",
        ),
        (lambda b: b.update(microblock=b["microblock"][:-2]), "receipt in microblock"),
        # Change the payload hash in the header (bytes 21..52).
        (lambda b: b.update(microblock=_flip_hex(b["microblock"], 2 * 21)), "payload hash"),
        # Change the timestamp in the header: the block hash no longer reaches the root.
        (lambda b: b.update(microblock=_flip_hex(b["microblock"], 2 * 9)), "path to anchor root"),
        (
            lambda b: b["anchor"].update(
                path=[_flip_hex(b["anchor"]["path"][0]), *b["anchor"]["path"][1:]]
            ),
            "path to anchor root",
        ),
        (lambda b: b["anchor"].update(leaf_index=1), "path to anchor root"),
        (lambda b: b["anchor"].update(root=_flip_hex(b["anchor"]["root"])), "path to anchor root"),
    ],
)
def test_corruption_fails_at_the_right_step(vectors: dict[str, Any], edit: Any, step: str) -> None:
    b = copy.deepcopy(_bundle(vectors))
    edit(b)
    steps = bundles.verify_bundle(b, FakeChain({bytes.fromhex(vectors["anchor"]["root"])}))
    assert steps[-1].name == step
    assert not steps[-1].ok
    assert all(s.ok for s in steps[:-1])


def test_unanchored_root_fails_on_chain(vectors: dict[str, Any]) -> None:
    steps = bundles.verify_bundle(_bundle(vectors), FakeChain(set()))
    assert steps[-1].name == "anchored on chain" and not steps[-1].ok


def test_chain_errors_are_a_failed_step(vectors: dict[str, Any]) -> None:
    def broken(root: bytes, chain_id: int, contract: str) -> bundles.OnChainAnchor:
        raise ConnectionError("rpc down")

    steps = bundles.verify_bundle(_bundle(vectors), broken)
    assert steps[-1].name == "anchored on chain"
    assert "rpc down" in steps[-1].detail
