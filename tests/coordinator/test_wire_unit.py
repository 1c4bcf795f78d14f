"""The compiled decoders of heartbeats and proofs (wire.py) never take a body the
protocol's parser refuses, and make of every body they take exactly the model that
parser makes: checked on hand-made refusals and on random mutations of valid bodies."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aeamc.coordinator import wire
from aeamc.coordinator.api import PROOF_BATCH_SHAPE, PROOF_SHAPE
from aeamc.coordinator.bodies import parse_json
from aeamc.coordinator.errors import ApiError
from aeamc.coordinator.ingestion import ProofIngestion
from aeamc.shared.errors import ProtocolError
from aeamc.shared.identity import SigningKey
from aeamc.shared.messages import PoA, PoT, parse_signed, sign

KEY = SigningKey.from_seed(bytes(range(32)))
TELEMETRY = {
    "battery_pct": 80,
    "charging": True,
    "cpu_temp_mc": 45_000,
    "cpu_load_permille": 100,
    "net_latency_us": 2_000,
    "mem_available_kb": 1_000_000,
}


def poa_body(**over: Any) -> dict[str, Any]:
    body = {
        "type": "poa",
        "device_id": KEY.device_id,
        "timestamp": 1_700_000_000_000,
        "seq": 7,
        "telemetry": TELEMETRY,
    }
    body.update(over)
    return sign(PoA, body, KEY).to_dict()


def pot_body(task_id: str = "task-1") -> dict[str, Any]:
    body = {
        "type": "pot",
        "task_id": task_id,
        "device_id": KEY.device_id,
        "timestamp": 1_700_000_000_000,
        "output_digest": "ab" * 32,
        "trace_root": "cd" * 32,
        "device_nonce": "ef" * 16,
        "checkpoint": "01" * 32,
        "execution_metadata": {"execution_time_ms": 3, "cpu_time_ms": 2, "chunks": 4},
    }
    return sign(PoT, body, KEY).to_dict()


def slow_poa(raw: bytes) -> PoA:
    return parse_signed(parse_json(raw), PoA)


def slow_submission(raw: bytes) -> PoT:
    return ProofIngestion.parse_submission(parse_json(raw, PROOF_SHAPE))


def slow_batch(raw: bytes) -> list[PoT]:
    body = parse_json(raw, PROOF_BATCH_SHAPE)
    assert isinstance(body, dict) and set(body) == {"proofs"}
    items = body["proofs"]
    assert isinstance(items, list) and 1 <= len(items) <= 256
    return [ProofIngestion.parse_submission(item) for item in items]


def agree(raw: bytes) -> None:
    """Each decoder either declines ``raw`` or makes what the protocol's parser makes."""
    cases = (
        (wire.decode_poa, slow_poa, lambda m: m),
        (wire.decode_submission, slow_submission, lambda m: m.pot),
        (wire.decode_batch, slow_batch, lambda ms: [m.pot for m in ms]),
    )
    for fast, slow, model in cases:
        got = fast(raw)
        if got is None:
            continue
        try:
            expected = slow(raw)
        except (ApiError, ProtocolError, AssertionError) as exc:
            pytest.fail(f"{fast.__name__} took {raw!r}, which is refused: {exc}")
        assert model(got) == expected
        if fast is not wire.decode_poa:
            outputs = [got["output"]] if isinstance(got, dict) else [g["output"] for g in got]
            assert all(isinstance(o, str) for o in outputs)


VALID = [
    json.dumps(poa_body()).encode(),
    json.dumps(poa_body(work=[{"task_id": "t:1", "chunks_done": 2}])).encode(),
    json.dumps(poa_body(telemetry=dict.fromkeys(TELEMETRY))).encode(),
    json.dumps({"pot": pot_body(), "output": "00ff"}).encode(),
    json.dumps({"pot": pot_body(), "output": ""}).encode(),
    json.dumps(
        {"proofs": [{"pot": pot_body(f"t-{i}"), "output": "aa"} for i in range(3)]}
    ).encode(),
]


def test_valid_bodies_are_decoded_as_the_protocol_parses_them() -> None:
    assert wire.decode_poa(VALID[0]) == slow_poa(VALID[0])
    assert wire.decode_poa(VALID[1]) == slow_poa(VALID[1])
    assert wire.decode_poa(VALID[2]) == slow_poa(VALID[2])
    decoded = wire.decode_submission(VALID[3])
    assert decoded is not None and decoded.pot == slow_submission(VALID[3])
    assert decoded["output"] == "00ff"
    batch = wire.decode_batch(VALID[5])
    assert batch is not None and [b.pot for b in batch] == slow_batch(VALID[5])
    # The signature still verifies on the decoded model: its bytes are the signed ones.
    assert wire.decode_poa(VALID[1]).verify(KEY.public_key) is None  # type: ignore[union-attr]


def _replace_once(raw: bytes, old: bytes, new: bytes) -> bytes:
    assert old in raw, old
    return raw.replace(old, new, 1)


REFUSED = [
    # A member twice: the protocol refuses it, msgspec alone would take the last.
    _replace_once(VALID[0], b'"seq": 7', b'"seq": 7, "seq": 8'),
    _replace_once(VALID[0], b'"battery_pct": 80', b'"battery_pct": 80, "battery_pct": 81'),
    _replace_once(VALID[0], b'"seq": 7', b'"seq" : 7, "seq":8'),
    _replace_once(VALID[3], b'"output": "00ff"', b'"output": "00ff", "output": "11"'),
    _replace_once(VALID[3], b'"chunks": 4', b'"chunks": 4, "chunks": 5'),
    _replace_once(VALID[5], b'"output": "aa"', b'"output": "aa", "output": "bb"'),
    # Numbers that are not the protocol's integers.
    _replace_once(VALID[0], b'"seq": 7', b'"seq": 7.0'),
    _replace_once(VALID[0], b'"seq": 7', b'"seq": 7e0'),
    _replace_once(VALID[0], b'"seq": 7', b'"seq": NaN'),
    _replace_once(VALID[0], b'"seq": 7', b'"seq": Infinity'),
    _replace_once(VALID[0], b'"seq": 7', b'"seq": 9007199254740992'),
    _replace_once(VALID[0], b'"seq": 7', b'"seq": 99999999999999999999999999'),
    _replace_once(VALID[0], b'"seq": 7', b'"seq": true'),
    _replace_once(VALID[0], b'"charging": true', b'"charging": 1'),
    _replace_once(VALID[0], b'"battery_pct": 80', b'"battery_pct": 101'),
    # Shapes.
    _replace_once(VALID[0], b'"seq": 7', b'"seq": 7, "extra": 1'),
    _replace_once(VALID[0], b'"seq": 7, ', b""),
    _replace_once(VALID[0], b'"type": "poa"', b'"type": "pot"'),
    _replace_once(VALID[0], b'"seq": 7', b'"seq": 7, "work": null'),
    _replace_once(VALID[0], b'"seq": 7', b'"seq": 7, "work": []'),
    _replace_once(VALID[3], b'"output": "00ff"', b'"output": "0ff"'),
    _replace_once(VALID[3], b'"output": "00ff"', b'"output": "00FF"'),
    _replace_once(VALID[1], b'"t:1"', b'"t\\":1"'),
    _replace_once(VALID[1], b'"t:1"', b'"t:1\\n"'),
    b"\xef\xbb\xbf" + VALID[0],
    VALID[0] + b"x",
    VALID[0][:-1],
    json.dumps({"proofs": []}).encode(),
    json.dumps({"proofs": [json.loads(VALID[3])] * 257}).encode(),
]


@pytest.mark.parametrize("raw", REFUSED)
def test_bodies_the_protocol_refuses_are_left_to_it(raw: bytes) -> None:
    assert wire.decode_poa(raw) is None
    assert wire.decode_submission(raw) is None
    assert wire.decode_batch(raw) is None
    agree(raw)


def test_escaped_names_and_values_are_what_they_spell() -> None:
    raw = _replace_once(VALID[0], b'"type": "poa"', b'"\\u0074ype": "\\u0070oa"')
    assert wire.decode_poa(raw) == slow_poa(raw)
    agree(raw)


_JSONISH = st.sampled_from(
    [
        *(b'"', b":", b",", b"{", b"}", b"[", b"]", b" ", b"\\", b"0", b"1", b"-", b".", b"e"),
        *(b"null", b"true", b'"seq"', b'"type"', b'"work"', b'"output"', b'"pot"', b"a", b"\n"),
    ]
)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    base=st.sampled_from(VALID),
    edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 3), _JSONISH), min_size=1, max_size=4),
)
def test_random_mutations_are_never_taken_wrongly(
    base: bytes, edits: list[tuple[float, int, bytes]]
) -> None:
    raw = base
    for where, cut, text in edits:
        at = int(where * len(raw))
        raw = raw[:at] + text + raw[at + cut :]
    agree(raw)


def test_random_valid_bodies_agree() -> None:
    for _ in range(200):
        work = [
            {"task_id": os.urandom(4).hex(), "chunks_done": int.from_bytes(os.urandom(2))}
            for _ in range(os.urandom(1)[0] % 4)
        ]
        body = poa_body(seq=int.from_bytes(os.urandom(6)), **({"work": work} if work else {}))
        raw = json.dumps(body, indent=os.urandom(1)[0] % 3 or None).encode()
        assert wire.decode_poa(raw) == slow_poa(raw)
