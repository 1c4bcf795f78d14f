"""The SPEC §9 error envelope: one code per case for both APIs, read back by both clients."""

from __future__ import annotations

import pytest

from aeamc.shared.envelope import (
    ApiError,
    decode_reply,
    error_code,
    error_of,
)
from aeamc.shared.errors import ReplayError, SignatureError, ValidationError


def test_server_refusals_have_one_code_per_status() -> None:
    too_large = ApiError.from_status(413, "too large")
    assert (too_large.status, too_large.code) == (413, "body_too_large")
    assert ApiError.from_status(405, "x").code == "method_not_allowed"
    assert ApiError.from_status(418, "x").code == "http_error"


@pytest.mark.parametrize(
    ("exc", "status", "body"),
    [
        (SignatureError("bad"), 401, {"code": "bad_signature", "message": "bad"}),
        (ReplayError("again"), 409, {"code": "replay", "message": "again"}),
        (
            ValidationError("seq", "must be an integer"),
            400,
            {"code": "invalid_message", "message": "seq: must be an integer", "field": "seq"},
        ),
    ],
)
def test_protocol_errors_map_to_a_status(exc: Exception, status: int, body: dict) -> None:
    err = ApiError.from_protocol(exc)  # type: ignore[arg-type]
    assert err.status == status
    assert err.body() == {"error": body}


def test_reading_replies_back() -> None:
    body = ApiError(409, "refused", "busy", reason="busy").body()
    assert error_of(body) == {"code": "refused", "message": "busy", "reason": "busy"}
    assert error_code(body) == "refused"
    assert error_of({"error": "text"}) is None and error_code({"error": {"code": 5}}) is None
    assert error_of([1]) is None and error_code(None) is None
    assert decode_reply(b'{"a": 1}') == {"a": 1}
    assert decode_reply(b"") is None and decode_reply(b"<html>") is None
