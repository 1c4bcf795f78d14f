"""Strict parsing: each kind of malformed input is refused with the field named."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from aeamc.shared import canonical
from aeamc.shared.errors import FreshnessError, SignatureError, ValidationError
from aeamc.shared.identity import SigningKey, parse_public_key, sign_message, verify_signature
from aeamc.shared.messages import (
    MAX_WORK_REPORTS,
    SIGNED_TYPES,
    Assignment,
    Challenge,
    Enroll,
    Opening,
    PoA,
    PoT,
    Privacy,
    WorkReport,
    check_fresh,
    parse,
    parse_signed,
    sign,
)

KEY = SigningKey.from_seed(bytes(range(32)))
OTHER = SigningKey.from_seed(bytes(32))


def _poa(vectors: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(vectors["poa"]["signed"])


def enroll_body(**over: Any) -> dict[str, Any]:
    body = {
        "type": "enroll",
        "public_key": KEY.public_key.hex(),
        "device_id": KEY.device_id,
        "timestamp": 1_764_300_000_000,
        "capabilities": {
            "kinds": ["sha256-chain", "classify-int8"],
            "cpus": 4,
            "mem_mb": 2048,
            "battery": True,
            "version": "0.1.0",
            "endpoint": "https://127.0.0.1:8443",
        },
    }
    body.update(over)
    return body


@pytest.mark.parametrize(
    ("mutate", "field", "code"),
    [
        (lambda m: m.pop("seq"), "seq", "missing_field"),
        (lambda m: m.update(extra=1), "extra", "unknown_field"),
        (lambda m: m.update(seq="1"), "seq", "invalid_message"),
        (lambda m: m.update(seq=True), "seq", "invalid_message"),
        (lambda m: m.update(seq=-1), "seq", "invalid_message"),
        (lambda m: m.update(seq=1.0), "seq", "invalid_message"),
        (lambda m: m.update(timestamp=2**53), "timestamp", "invalid_message"),
        (lambda m: m.update(device_id="ABCDEF" * 5 + "AB"), "device_id", "invalid_message"),
        (lambda m: m.update(device_id="ab"), "device_id", "invalid_message"),
        (lambda m: m["telemetry"].update(battery_pct=101), "telemetry.battery_pct", None),
        (lambda m: m["telemetry"].update(charging=1), "telemetry.charging", None),
        (lambda m: m["telemetry"].pop("cpu_temp_mc"), "telemetry.cpu_temp_mc", "missing_field"),
        (lambda m: m["telemetry"].update(gpu=1), "telemetry.gpu", "unknown_field"),
        (lambda m: m.update(telemetry=[]), "telemetry", None),
        (lambda m: m.update(signature="00"), "signature", None),
        (lambda m: m.update(type="pot"), "type", "wrong_type"),
        # The work in hand: absent or 1-64 reports, each exactly a task id and 0-65,536.
        (lambda m: m.update(work=[]), "work", "invalid_message"),
        (lambda m: m.update(work=None), "work", "invalid_message"),
        (lambda m: m.update(work={"task_id": "t-1", "chunks_done": 1}), "work", None),
        (lambda m: m.update(work=[_report("t", 0)] * (MAX_WORK_REPORTS + 1)), "work", None),
        (lambda m: m.update(work=[_report("t", 65_537)]), "work[0].chunks_done", None),
        (lambda m: m.update(work=[_report("t", 0), _report("u", -1)]), "work[1].chunks_done", None),
        (lambda m: m.update(work=[_report("t", True)]), "work[0].chunks_done", None),
        (lambda m: m.update(work=[_report("t", 1.0)]), "work[0].chunks_done", None),
        (lambda m: m.update(work=[_report("../t", 1)]), "work[0].task_id", None),
        (lambda m: m.update(work=[{"task_id": "t"}]), "work[0].chunks_done", "missing_field"),
        (lambda m: m.update(work=[{**_report("t", 1), "chunks": 8}]), "work[0].chunks", None),
    ],
)
def test_poa_rejections_name_the_field(
    vectors: dict[str, Any], mutate: Any, field: str, code: str | None
) -> None:
    msg = _poa(vectors)
    mutate(msg)
    with pytest.raises(ValidationError) as info:
        parse_signed(msg, PoA)
    assert info.value.field == field
    assert info.value.message.startswith(field)
    if code:
        assert info.value.code == code


def _report(task_id: str, chunks_done: Any) -> dict[str, Any]:
    return {"task_id": task_id, "chunks_done": chunks_done}


def test_a_heartbeat_without_work_is_the_bytes_it_always_was(vectors: dict[str, Any]) -> None:
    """The optional ``work`` adds nothing when absent: the vector's heartbeat, signed
    again by its key, is the same object, signing input and signature."""
    key = SigningKey.from_seed(bytes.fromhex(vectors["identity"]["ed25519_seed"]))
    signed = vectors["poa"]["signed"]
    poa = sign(PoA, {k: v for k, v in signed.items() if k != "signature"}, key)
    assert poa.work is None
    assert poa.to_dict() == signed and "work" not in poa.to_dict()
    assert canonical.signing_input(poa.to_dict()) == vectors["poa"]["signing_input_utf8"].encode()
    assert canonical.canonical_json(poa.to_dict()) == canonical.canonical_json(signed)


def test_a_heartbeat_with_work_round_trips_signed(vectors: dict[str, Any]) -> None:
    """The work in hand is parsed into reports, serialised back exactly, and signed: a
    changed count no longer verifies."""
    key = SigningKey.from_seed(bytes.fromhex(vectors["identity"]["ed25519_seed"]))
    body = {k: v for k, v in _poa(vectors).items() if k != "signature"}
    work = [_report("t-5f3a", 27), _report("owner.ref:2", 0)]
    poa = sign(PoA, {**body, "work": work}, key)
    assert poa.work == (WorkReport("t-5f3a", 27), WorkReport("owner.ref:2", 0))
    wire = poa.to_dict()
    assert wire["work"] == work
    assert {k: v for k, v in wire.items() if k not in ("work", "signature")} == body
    again = parse_signed(copy.deepcopy(wire), PoA)
    assert again == poa and again.to_dict() == wire
    again.verify(key.public_key, signer_id=again.device_id)
    assert canonical.signing_input(wire) != vectors["poa"]["signing_input_utf8"].encode()
    tampered = copy.deepcopy(wire)
    tampered["work"][0]["chunks_done"] = 28
    with pytest.raises(SignatureError):
        parse_signed(tampered, PoA).verify(key.public_key)
    # The most a heartbeat may carry parses too.
    full = [_report(f"t-{i}", 65_536) for i in range(MAX_WORK_REPORTS)]
    assert len(sign(PoA, {**body, "work": full}, key).work or ()) == MAX_WORK_REPORTS


def test_nulls_are_accepted_for_unknown_telemetry(vectors: dict[str, Any]) -> None:
    msg = _poa(vectors)
    for k in msg["telemetry"]:
        msg["telemetry"][k] = None
    poa = parse_signed(msg, PoA)
    assert poa.telemetry.battery_pct is None
    assert poa.to_dict() == msg


def test_not_an_object() -> None:
    with pytest.raises(ValidationError, match=r"\$"):
        parse_signed([1, 2], PoA)
    with pytest.raises(ValidationError) as info:
        parse(PoA, "x")
    assert info.value.field == "$"


def test_cross_type_signature_is_refused(vectors: dict[str, Any]) -> None:
    """A validly signed PoA can never pass as another message type."""
    poa = _poa(vectors)
    for model in (PoT, Enroll, Assignment, Challenge, Opening, Privacy):
        with pytest.raises(ValidationError) as info:
            parse_signed(poa, model)
        assert info.value.code == "wrong_type"


def test_enroll_roundtrip_optional_token_and_self_signature() -> None:
    enroll = sign(Enroll, enroll_body(), KEY)
    assert "token" not in enroll.to_dict()
    enroll.verify_self()
    with_token = sign(Enroll, enroll_body(token="tok-123"), KEY)
    assert with_token.token == "tok-123"
    assert parse_signed(with_token.to_dict(), Enroll) == with_token
    with_token.verify_self()


def test_enroll_with_someone_elses_key_is_refused() -> None:
    forged = sign(Enroll, enroll_body(public_key=OTHER.public_key.hex()), KEY)
    with pytest.raises(SignatureError, match="does not match"):
        forged.verify_self()
    stolen_id = sign(
        Enroll, enroll_body(public_key=OTHER.public_key.hex(), device_id=OTHER.device_id), KEY
    )
    with pytest.raises(SignatureError, match="does not verify"):
        stolen_id.verify_self()


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"kinds": ["Bad Kind"]}, "capabilities.kinds[0]"),
        ({"kinds": ["k"] * 33}, "capabilities.kinds"),
        ({"cpus": 0}, "capabilities.cpus"),
        ({"version": "x" * 65}, "capabilities.version"),
        ({"endpoint": "ftp://x"}, "capabilities.endpoint"),
        ({"endpoint": "https://h/" + "a" * 300}, "capabilities.endpoint"),
    ],
)
def test_capabilities_validated(over: dict[str, Any], field: str) -> None:
    body = enroll_body()
    body["capabilities"].update(over)
    with pytest.raises(ValidationError) as info:
        sign(Enroll, body, KEY)
    assert info.value.field == field


def test_signature_tamper_detected(vectors: dict[str, Any]) -> None:
    key = bytes.fromhex(vectors["identity"]["public_key"])
    msg = _poa(vectors)
    msg["seq"] = 2
    poa = parse_signed(msg, PoA)
    with pytest.raises(SignatureError):
        poa.verify(key)
    msg = _poa(vectors)
    msg["signature"] = "0" * 128
    with pytest.raises(SignatureError):
        parse_signed(msg, PoA).verify(key)


def test_verify_signature_rejects_malformed_signature_values() -> None:
    with pytest.raises(SignatureError, match="128"):
        verify_signature({"type": "x", "signature": 5}, KEY.public_key)
    with pytest.raises(SignatureError, match="not hex"):
        verify_signature({"type": "x", "signature": "zz" * 64}, KEY.public_key)
    with pytest.raises(SignatureError):
        verify_signature(sign_message({"type": "x"}, KEY), OTHER.public_key)


def test_assignment_params_are_free_form_but_bounded() -> None:
    body = {
        "type": "assignment",
        "task_id": "t-1",
        "device_id": KEY.device_id,
        "coordinator_id": OTHER.device_id,
        "kind": "sha256-chain",
        "params": {"seed": "aa" * 32, "iterations": 10, "nested": {"list": [1, None, True]}},
        "chunks": 4,
        "issued_at": 1,
        "expires_at": 2,
    }
    a = sign(Assignment, body, OTHER)
    assert a.params["nested"]["list"] == [1, None, True]
    a.verify(OTHER.public_key, signer_id=OTHER.device_id)
    for bad, field in [
        ({"x": 1.5}, "params.x"),
        ({"x": {"y": [[[[[[[[[1]]]]]]]]]}}, "params.x.y[0][0][0][0][0][0][0]"),
        ([1], "params"),
        ({"x": list(range(2000))}, "params.x"),
    ]:
        with pytest.raises(ValidationError) as info:
            sign(Assignment, {**body, "params": bad}, OTHER)
        assert info.value.field == field
    with pytest.raises(ValidationError, match="chunks"):
        sign(Assignment, {**body, "chunks": 0}, OTHER)


def test_challenge_and_opening_shapes() -> None:
    ch = sign(
        Challenge,
        {
            "type": "challenge",
            "task_id": "t-1",
            "device_id": KEY.device_id,
            "block_hash": "ab" * 32,
            "indices": [0, 3],
            "issued_at": 5,
        },
        OTHER,
    )
    assert ch.indices == (0, 3)
    assert ch.to_dict()["indices"] == [0, 3]
    with pytest.raises(ValidationError) as info:
        parse(Challenge, {**ch.to_dict(), "indices": []})
    assert info.value.field == "indices"
    op_body = {
        "type": "opening",
        "task_id": "t-1",
        "device_id": KEY.device_id,
        "openings": [{"index": 0, "output": "00ff", "path": ["cd" * 32]}],
    }
    op = sign(Opening, op_body, KEY)
    assert op.openings[0].output == "00ff"
    bad = copy.deepcopy(op_body)
    bad["openings"][0]["output"] = "0"
    with pytest.raises(ValidationError) as info:
        sign(Opening, bad, KEY)
    assert info.value.field == "openings[0].output"
    bad["openings"][0]["output"] = "GG"
    with pytest.raises(ValidationError, match="lowercase hex"):
        sign(Opening, bad, KEY)


def test_task_id_rules() -> None:
    base = {
        "type": "challenge",
        "device_id": KEY.device_id,
        "block_hash": "ab" * 32,
        "indices": [0],
        "issued_at": 5,
    }
    for bad in ["", "-x", "a b", "é", "x" * 65]:
        with pytest.raises(ValidationError) as info:
            sign(Challenge, {**base, "task_id": bad}, KEY)
        assert info.value.field == "task_id"


def test_freshness_window() -> None:
    check_fresh(1000, 1000 + 60_000, 60_000)
    check_fresh(1000 + 60_000, 1000, 60_000)
    with pytest.raises(FreshnessError):
        check_fresh(1000, 1000 + 60_001, 60_000)
    with pytest.raises(FreshnessError):
        check_fresh(1000 + 60_001, 1000, 60_000)


def test_canonical_refuses_floats_and_huge_ints() -> None:
    with pytest.raises(ValidationError) as info:
        canonical.canonical_json({"a": {"b": [1, 0.5]}})
    assert info.value.field == "a.b[1]"
    with pytest.raises(ValidationError):
        canonical.canonical_json({"a": 2**60})
    with pytest.raises(ValidationError):
        canonical.canonical_json({1: 2})
    assert canonical.canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def test_public_key_parsing() -> None:
    assert parse_public_key(KEY.public_key.hex()) == KEY.public_key
    for bad in ["AB" * 32, "ab" * 31, "zz" * 32, 5]:
        with pytest.raises(ValidationError):
            parse_public_key(bad)  # type: ignore[arg-type]


def test_key_seed_roundtrip_and_bad_seed() -> None:
    assert SigningKey.from_seed(KEY.seed).public_key == KEY.public_key
    with pytest.raises(ValidationError):
        SigningKey.from_seed(b"short")
    assert SigningKey.generate(bytes([7]) * 32).public_key != KEY.public_key


def test_privacy_request_is_signed_strict_and_typed() -> None:
    body = {"type": "privacy", "device_id": KEY.device_id, "action": "erase", "timestamp": 1}
    msg = sign(Privacy, body, KEY)
    assert SIGNED_TYPES["privacy"] is Privacy
    assert parse_signed(msg.to_dict(), Privacy) == msg
    msg.verify(KEY.public_key, signer_id=KEY.device_id)
    with pytest.raises(SignatureError):
        msg.verify(OTHER.public_key)
    for over, field in (({"action": "delete"}, "action"), ({"extra": 1}, "extra")):
        with pytest.raises(ValidationError) as info:
            parse_signed({**msg.to_dict(), **over}, Privacy)
        assert info.value.field == field
    # An erasure request signed over the export action does not verify, and vice versa.
    with pytest.raises(SignatureError):
        parse_signed({**msg.to_dict(), "action": "export"}, Privacy).verify(KEY.public_key)
