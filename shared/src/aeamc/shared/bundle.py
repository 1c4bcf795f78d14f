"""Receipt proof bundles (SPEC §8): checking a receipt without trusting the coordinator.

Each step is reported separately so an auditor learns exactly which link is broken. The
last step asks the chain whether the root is anchored; it is a callable so this module
stays pure and ``aeamc verify`` plugs in a real JSON-RPC client.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import merkle, microblock
from .errors import ProtocolError, ValidationError
from .identity import check_key_matches_id, parse_public_key
from .messages import PoT, parse_signed
from .schema import array, hex_bytes, integer, record, text

STEPS = (
    "bundle",
    "key matches device_id",
    "PoT signature",
    "receipt in microblock",
    "payload hash",
    "block hash",
    "path to anchor root",
    "anchored on chain",
)

_ANCHOR = record(
    {
        "root": hex_bytes(32),
        "leaf_index": integer(0, 1 << 32),
        "tree_size": integer(1, 1 << 32),
        "path": array(hex_bytes(32), 64),
        "chain_id": integer(1, 1 << 53),
        "contract": text(42, r"0x[0-9a-fA-F]{40}"),
        "tx_hash": text(66, r"0x[0-9a-f]{64}"),
        "block_number": integer(0, 1 << 53),
    },
    dict,
)


@dataclass(frozen=True)
class OnChainAnchor:
    anchored: bool
    timestamp: int
    block_number: int


#: (root, chain_id, contract) → what ``verifyAnchor(root)`` returned on that chain.
ChainCheck = Callable[[bytes, int, str], OnChainAnchor]


@dataclass(frozen=True)
class Step:
    name: str
    ok: bool
    detail: str


def build_bundle(
    pot: PoT,
    device_public_key: bytes,
    block: microblock.Microblock,
    anchor: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "pot": pot.to_dict(),
        "device_public_key": device_public_key.hex(),
        "microblock": block.to_bytes().hex(),
        "anchor": dict(anchor),
    }


def verify_bundle(bundle: Any, chain_check: ChainCheck | None) -> list[Step]:
    """Run the §8 checks in order; stop at the first failure (later steps would mislead).

    With ``chain_check=None`` the on-chain step is not run and not reported as passed.
    """
    steps: list[Step] = []

    def fail(name: str, detail: str) -> list[Step]:
        steps.append(Step(name, False, detail))
        return steps

    try:
        if not isinstance(bundle, Mapping) or set(bundle) != {
            "pot",
            "device_public_key",
            "microblock",
            "anchor",
        }:
            raise ValidationError("$", "needs exactly pot, device_public_key, microblock, anchor")
        pot = parse_signed(bundle["pot"], PoT)
        key = parse_public_key(bundle["device_public_key"], "device_public_key")
        raw = bytes.fromhex(hex_bytes(max_bytes=1 << 24)(bundle["microblock"], "microblock"))
        anchor = _ANCHOR(bundle["anchor"], "anchor")
    except (ProtocolError, ValueError) as exc:
        return fail("bundle", str(exc))
    steps.append(Step("bundle", True, "well-formed"))

    try:
        check_key_matches_id(key, pot.device_id)
    except ProtocolError as exc:
        return fail("key matches device_id", str(exc))
    steps.append(Step("key matches device_id", True, pot.device_id))

    try:
        pot.verify(key)
    except ProtocolError as exc:
        return fail("PoT signature", str(exc))
    steps.append(Step("PoT signature", True, f"task {pot.task_id}"))

    try:
        header = microblock.decode_header(raw)
        payload = raw[microblock.HEADER_SIZE :]
        receipts = microblock.decode_payload(payload, header.receipt_count)
    except ProtocolError as exc:
        return fail("receipt in microblock", f"microblock does not parse: {exc}")
    wanted = (pot.task_id, pot.device_id, bytes.fromhex(pot.signature))
    if not any((r.task_id, r.device_id, r.signature) == wanted for r in receipts):
        return fail("receipt in microblock", "no receipt with this task, device and signature")
    steps.append(Step("receipt in microblock", True, f"{len(receipts)} receipts"))

    if hashlib.sha256(payload).digest() != header.payload_hash:
        return fail("payload hash", "payload does not hash to the header's payload_hash")
    steps.append(Step("payload hash", True, header.payload_hash.hex()))

    block_hash = header.block_hash
    steps.append(Step("block hash", True, block_hash.hex()))

    root = bytes.fromhex(anchor["root"])
    try:
        merkle.verify_path(
            block_hash,
            anchor["leaf_index"],
            anchor["tree_size"],
            [bytes.fromhex(p) for p in anchor["path"]],
            root,
        )
    except ProtocolError as exc:
        return fail("path to anchor root", str(exc))
    steps.append(Step("path to anchor root", True, anchor["root"]))

    if chain_check is None:
        return steps
    try:
        result = chain_check(root, anchor["chain_id"], anchor["contract"])
    except Exception as exc:  # the chain client's failure is a failed step, not a crash
        return fail("anchored on chain", f"could not ask the chain: {exc}")
    if not result.anchored:
        return fail("anchored on chain", f"root {anchor['root']} is not anchored")
    steps.append(
        Step(
            "anchored on chain",
            True,
            f"block {result.block_number}, timestamp {result.timestamp}",
        )
    )
    return steps
