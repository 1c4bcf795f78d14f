"""Every value of the specification's test vectors, reproduced byte for byte."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from aeamc.shared import canonical, eps, flags, merkle, microblock, proofs, spotcheck
from aeamc.shared.identity import SigningKey, device_id_for, sign_message
from aeamc.shared.messages import PoA, PoT, Telemetry, parse, parse_signed
from aeamc.shared.tasks.sha256_chain import KIND as SHA256_CHAIN


@pytest.fixture(scope="module")
def key(vectors: dict[str, Any]) -> SigningKey:
    return SigningKey.from_seed(bytes.fromhex(vectors["identity"]["ed25519_seed"]))


def test_identity(vectors: dict[str, Any], key: SigningKey) -> None:
    assert key.public_key.hex() == vectors["identity"]["public_key"]
    assert key.device_id == vectors["identity"]["device_id"]
    assert device_id_for(key.public_key) == vectors["identity"]["device_id"]


def test_poa_signing_input_and_signature(vectors: dict[str, Any], key: SigningKey) -> None:
    signed = vectors["poa"]["signed"]
    assert canonical.signing_input(signed) == vectors["poa"]["signing_input_utf8"].encode()
    body = {k: v for k, v in signed.items() if k != "signature"}
    assert sign_message(body, key) == signed
    poa = parse_signed(signed, PoA)
    assert poa.to_dict() == signed
    poa.verify(key.public_key, signer_id=poa.device_id)


def test_eps_example(vectors: dict[str, Any]) -> None:
    v = vectors["eps"]
    w = v["weights"]
    config = eps.EpsConfig(
        w_battery=w["battery"],
        w_charging=w["charging"],
        w_temperature=w["temperature"],
        w_network=w["network"],
        max_temp_c=v["max_temp_c"],
        max_latency_ms=v["max_latency_ms"],
    )
    t = parse(Telemetry, v["telemetry"])
    assert eps.eps(t, config) == v["eps"]
    assert eps.eps_exact(t, config) == eps.Fraction("0.5875")


def test_sha256_chain_task(vectors: dict[str, Any], key: SigningKey) -> None:
    v = vectors["task_sha256_chain"]
    SHA256_CHAIN.validate_params(v["params"], v["chunks"])
    trace = proofs.run_task(SHA256_CHAIN, v["params"], v["chunks"])
    assert [o.hex() for o in trace.outputs] == v["chunk_outputs"]
    assert [d.hex() for d in trace.digests] == v["chunk_digests"]
    assert trace.root.hex() == v["trace_root"]
    assert trace.output.hex() == v["output"]
    assert trace.output_digest.hex() == v["pot"]["output_digest"]
    assert [p for p in trace.opening(2).path] == v["opening_path_for_chunk_2"]


def test_pot_built_exactly(vectors: dict[str, Any], key: SigningKey) -> None:
    v = vectors["task_sha256_chain"]
    expected = v["pot"]
    trace = proofs.run_task(SHA256_CHAIN, v["params"], v["chunks"])
    pot = proofs.build_pot(
        key,
        task_id=expected["task_id"],
        device_id=key.device_id,
        trace=trace,
        nonce=bytes.fromhex(expected["device_nonce"]),
        timestamp=expected["timestamp"],
        execution_time_ms=expected["execution_metadata"]["execution_time_ms"],
        cpu_time_ms=expected["execution_metadata"]["cpu_time_ms"],
    )
    assert pot.to_dict() == expected
    assert (
        proofs.checkpoint(
            expected["task_id"],
            bytes.fromhex(expected["device_nonce"]),
            bytes.fromhex(expected["trace_root"]),
        ).hex()
        == expected["checkpoint"]
    )


def test_device2_pot_signature_verifies(vectors: dict[str, Any]) -> None:
    d2 = vectors["device2"]
    key = bytes.fromhex(d2["public_key"])
    assert device_id_for(key) == d2["device_id"]
    pot = parse_signed(d2["pot"], PoT)
    pot.verify(key, signer_id=d2["device_id"])
    nonce = bytes.fromhex(d2["pot"]["device_nonce"])
    root = bytes.fromhex(d2["pot"]["trace_root"])
    assert proofs.checkpoint("t-0002", nonce, root).hex() == d2["pot"]["checkpoint"]


def test_microblocks_decode_and_reencode(vectors: dict[str, Any]) -> None:
    previous = microblock.GENESIS_PREVIOUS
    for b in vectors["microblocks"]:
        raw = bytes.fromhex(b["header"] + b["payload"])
        block = microblock.decode(raw)
        assert block.block_hash.hex() == b["block_hash"]
        assert hashlib.sha256(bytes.fromhex(b["header"])).hexdigest() == b["block_hash"]
        assert block.to_bytes() == raw
        assert block.header.previous_hash == previous
        previous = block.block_hash


def test_microblock_built_from_receipts(vectors: dict[str, Any]) -> None:
    pots = {
        "t-0001": vectors["task_sha256_chain"]["pot"],
        "t-0002": vectors["device2"]["pot"],
    }
    previous = microblock.GENESIS_PREVIOUS
    for b in vectors["microblocks"]:
        header = microblock.decode_header(bytes.fromhex(b["header"]))
        receipts = [
            microblock.Receipt(r.task_id, r.device_id, bytes.fromhex(pots[r.task_id]["signature"]))
            for r in microblock.decode(bytes.fromhex(b["header"] + b["payload"])).receipts
        ]
        built = microblock.build_block(
            cluster_id=header.cluster_id,
            timestamp=header.timestamp,
            previous_hash=previous,
            receipts=receipts,
        )
        assert built.header.encode().hex() == b["header"]
        assert built.payload.hex() == b["payload"]
        previous = built.block_hash


def test_vector_chain_has_the_repeat_a_coordinator_must_never_emit(
    vectors: dict[str, Any],
) -> None:
    blocks = [
        microblock.decode(bytes.fromhex(b["header"] + b["payload"])) for b in vectors["microblocks"]
    ]
    with pytest.raises(microblock.MicroblockError, match="repeats receipt t-0001"):
        microblock.verify_chain(blocks)
    microblock.verify_chain(blocks[:1])


def test_spot_check_indices(vectors: dict[str, Any]) -> None:
    v = vectors["spot_check"]
    block_hash = bytes.fromhex(v["block_hash"])
    assert spotcheck.challenge_seed(block_hash, v["task_id"]).hex() == v["seed"]
    assert (
        spotcheck.challenge_indices(block_hash, v["task_id"], v["k"], v["chunks"]) == v["indices"]
    )


def test_anchor_root_and_path(vectors: dict[str, Any]) -> None:
    v = vectors["anchor"]
    hashes = [bytes.fromhex(h) for h in v["block_hashes"]]
    assert merkle.root(hashes).hex() == v["root"]
    assert [p.hex() for p in merkle.audit_path(hashes, 1)] == v["path_for_index_1"]
    merkle.verify_path(
        hashes[1], 1, 3, [bytes.fromhex(p) for p in v["path_for_index_1"]], bytes.fromhex(v["root"])
    )
    assert merkle.root(hashes[:1]).hex() == v["single_block_root"]


def test_feature_flag_bucket(vectors: dict[str, Any]) -> None:
    v = vectors["feature_flag"]
    assert flags.bucket(v["flag"], v["device_id"]) == v["bucket"]
    assert flags.in_rollout(v["flag"], v["device_id"], v["bucket"] + 1)
    assert not flags.in_rollout(v["flag"], v["device_id"], v["bucket"])
