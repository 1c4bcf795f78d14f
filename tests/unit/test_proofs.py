"""PoT verification and spot-check openings (SPEC §2), against honest and cheating devices."""

from __future__ import annotations

from typing import Any

import pytest

from aeamc.shared import proofs, spotcheck
from aeamc.shared.errors import FreshnessError, ProofError, SignatureError
from aeamc.shared.identity import SigningKey
from aeamc.shared.messages import Assignment, Challenge, Opening, PoT, parse, sign
from aeamc.shared.tasks.sha256_chain import KIND

DEVICE = SigningKey.from_seed(bytes([1]) * 32)
COORD = SigningKey.from_seed(bytes([2]) * 32)
PARAMS = {"seed": "aa" * 32, "iterations": 50}
CHUNKS = 6
NOW = 1_764_300_000_000


def _assignment(chunks: int = CHUNKS) -> Assignment:
    return sign(
        Assignment,
        {
            "type": "assignment",
            "task_id": "t-9",
            "device_id": DEVICE.device_id,
            "coordinator_id": COORD.device_id,
            "kind": KIND.name,
            "params": PARAMS,
            "chunks": chunks,
            "issued_at": NOW - 10_000,
            "expires_at": NOW + 600_000,
        },
        COORD,
    )


def _pot(trace: proofs.Trace, **over: Any) -> PoT:
    kw: dict[str, Any] = {
        "task_id": "t-9",
        "device_id": DEVICE.device_id,
        "trace": trace,
        "nonce": bytes(range(16)),
        "timestamp": NOW,
        "execution_time_ms": 5,
        "cpu_time_ms": 4,
    }
    kw.update(over)
    return proofs.build_pot(DEVICE, **kw)


@pytest.fixture(scope="module")
def trace() -> proofs.Trace:
    return proofs.run_task(KIND, PARAMS, CHUNKS)


def test_honest_pot_verifies(trace: proofs.Trace) -> None:
    pot = _pot(trace)
    outputs = proofs.verify_pot(
        pot, trace.output, public_key=DEVICE.public_key, assignment=_assignment(), now_ms=NOW
    )
    assert outputs == list(trace.outputs)


def test_pot_failures(trace: proofs.Trace) -> None:
    a = _assignment()
    pot = _pot(trace)

    def check(
        p: PoT, output: bytes = trace.output, key: bytes = DEVICE.public_key, **kw: Any
    ) -> None:
        proofs.verify_pot(
            p, output, public_key=key, assignment=kw.get("a", a), now_ms=kw.get("now", NOW)
        )

    with pytest.raises(SignatureError):
        check(pot, key=COORD.public_key)
    with pytest.raises(FreshnessError):
        check(pot, now=NOW + 300_001)
    with pytest.raises(ProofError, match="output_digest"):
        check(pot, output=trace.output[:-1] + b"\x00")
    with pytest.raises(ProofError, match="chunks"):
        check(pot, a=_assignment(CHUNKS + 1))
    other_task = _pot(trace, task_id="t-10")
    with pytest.raises(ProofError, match="not for this assignment"):
        check(other_task)
    # A device that claims `chunks` pieces but ships fewer.
    short = proofs.Trace(trace.outputs[:-1])
    body = _pot(short).to_dict()
    body["execution_metadata"]["chunks"] = CHUNKS
    with pytest.raises(ProofError, match="holds 5 chunks"):
        check(sign(PoT, body, DEVICE), output=short.output)


def test_output_that_does_not_fit_the_trace_root_is_refused(trace: proofs.Trace) -> None:
    """A device committing to one trace but shipping other (well-formed) output."""
    other = proofs.Trace((b"x" * 32,) * CHUNKS)
    honest = _pot(trace).to_dict()
    honest["output_digest"] = other.output_digest.hex()
    forged = sign(PoT, honest, DEVICE)
    with pytest.raises(ProofError, match="trace_root"):
        proofs.verify_pot(
            forged, other.output, public_key=DEVICE.public_key, assignment=_assignment(), now_ms=NOW
        )
    body = _pot(trace).to_dict()
    body["checkpoint"] = "00" * 32
    with pytest.raises(ProofError, match="checkpoint"):
        proofs.verify_pot(
            sign(PoT, body, DEVICE),
            trace.output,
            public_key=DEVICE.public_key,
            assignment=_assignment(),
            now_ms=NOW,
        )


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        (b"\x01\x00", "length of chunk 0"),
        (b"\x05\x00\x00\x00ab", "truncated in chunk 0"),
        (b"", "holds 0 chunks"),
    ],
)
def test_split_output_strict(output: bytes, reason: str) -> None:
    with pytest.raises(ProofError, match=reason):
        proofs.split_output(output, 2)


def test_split_output_stops_early_on_too_many_chunks() -> None:
    many = proofs.encode_output([b"a"] * 100)
    with pytest.raises(ProofError, match="holds 3 chunks"):
        proofs.split_output(many, 2)


def _challenge(block_hash: bytes, k: int = 3) -> Challenge:
    return sign(
        Challenge,
        {
            "type": "challenge",
            "task_id": "t-9",
            "device_id": DEVICE.device_id,
            "block_hash": block_hash.hex(),
            "indices": spotcheck.challenge_indices(block_hash, "t-9", k, CHUNKS),
            "issued_at": NOW,
        },
        COORD,
    )


def _judge(opening: Any, ch: Challenge, pot: PoT, outputs: Any) -> proofs.SpotCheckResult:
    return proofs.verify_opening(
        opening,
        challenge=ch,
        pot=pot,
        outputs=outputs,
        kind=KIND,
        params=PARAMS,
        public_key=DEVICE.public_key,
    )


def test_honest_opening_passes(trace: proofs.Trace) -> None:
    pot = _pot(trace)
    ch = _challenge(b"\x11" * 32)
    result = _judge(proofs.build_opening(DEVICE, ch, trace), ch, pot, trace.outputs)
    assert result.verdict == proofs.PASSED
    assert result.reexecuted_chunks == 3


def test_cheater_who_skipped_a_chunk_fails() -> None:
    """The device made up chunk outputs; its commitments are consistent but the work is not."""
    honest = proofs.run_task(KIND, PARAMS, CHUNKS)
    fake = proofs.Trace(tuple(o if i % 2 else b"\x00" * 32 for i, o in enumerate(honest.outputs)))
    pot = _pot(fake)
    proofs.verify_pot(
        pot, fake.output, public_key=DEVICE.public_key, assignment=_assignment(), now_ms=NOW
    )
    ch = _challenge(b"\x22" * 32, k=CHUNKS)
    result = _judge(proofs.build_opening(DEVICE, ch, fake), ch, pot, fake.outputs)
    assert result.verdict == proofs.FAILED
    assert "re-execution" in result.detail


def test_opening_failures(trace: proofs.Trace) -> None:
    pot = _pot(trace)
    ch = _challenge(b"\x33" * 32)
    good = proofs.build_opening(DEVICE, ch, trace).to_dict()

    wrong_indices = {**good, "openings": good["openings"][:1]}
    r = _judge(sign(Opening, wrong_indices, DEVICE), ch, pot, trace.outputs)
    assert r.verdict == proofs.FAILED and "challenged" in r.detail

    bad_path = dict(good)
    bad_path["openings"] = [dict(o) for o in good["openings"]]
    bad_path["openings"][0]["path"] = ["00" * 32] * len(good["openings"][0]["path"])
    r = _judge(sign(Opening, bad_path, DEVICE), ch, pot, trace.outputs)
    assert r.verdict == proofs.FAILED and "root" in r.detail

    stored = list(trace.outputs)
    first = ch.indices[0]
    stored[first] = b"\x00" * 32
    r = _judge(proofs.build_opening(DEVICE, ch, trace), ch, pot, stored)
    assert r.verdict == proofs.FAILED and "stored output" in r.detail

    with pytest.raises(SignatureError):
        proofs.verify_opening(
            proofs.build_opening(COORD, ch, trace),
            challenge=ch,
            pot=pot,
            outputs=trace.outputs,
            kind=KIND,
            params=PARAMS,
            public_key=DEVICE.public_key,
        )
    other = sign(Challenge, {**ch.to_dict(), "task_id": "t-10"}, COORD)
    with pytest.raises(ProofError, match="another challenge"):
        _judge(proofs.build_opening(DEVICE, other, trace), ch, pot, trace.outputs)


def test_build_pot_requires_16_byte_nonce(trace: proofs.Trace) -> None:
    with pytest.raises(ValueError, match="16"):
        _pot(trace, nonce=b"short")


def test_spot_check_helpers() -> None:
    assert sorted(spotcheck.challenge_indices(b"\x00" * 32, "t", 10, 3)) == [0, 1, 2]
    assert spotcheck.challenge_indices(b"\x00" * 32, "t", 1, 1) == [0]
    with pytest.raises(ValueError):
        spotcheck.challenge_indices(b"\x00" * 32, "t", 1, 0)
    assert spotcheck.detection_probability(0.1, 3) == pytest.approx(0.271)
    assert parse(Challenge, _challenge(b"\x44" * 32).to_dict()).indices
