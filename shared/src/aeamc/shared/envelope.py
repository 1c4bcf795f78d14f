"""The error envelope of both HTTP APIs (SPEC §9), and reading it back from an answer.

Every refusal is ``{"error": {"code", "message", ...}}`` with a stable ``code``. The agent's
API, the coordinator's API and their clients all build and read it through this module, so
the same case has the same code on both sides (a body over the limit is ``body_too_large``
wherever it is refused). Nothing here does I/O: the HTTP shells turn an ``ApiError`` into a
response and hand received bytes to ``decode_reply``.
"""

from __future__ import annotations

import json
from typing import Any, Self

from .errors import ProtocolError

#: Protocol error code → HTTP status. Anything a client sent is a 4xx.
STATUS_BY_CODE = {
    "invalid_message": 400,
    "missing_field": 400,
    "unknown_field": 400,
    "wrong_type": 400,
    "bad_params": 400,
    "unknown_kind": 400,
    "stale_message": 400,
    "bad_proof": 422,
    "bad_microblock": 400,
    "bad_signature": 401,
    "replay": 409,
    "protocol_error": 400,
}

#: The code of a refusal the HTTP server itself makes (no route, wrong method, too large).
CODE_BY_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}
#: A status ``CODE_BY_STATUS`` does not name.
HTTP_ERROR = "http_error"
#: A fault of the server itself (a 5xx): the message never carries internals.
INTERNAL = "internal"


class ApiError(Exception):
    """A refusal to answer with: its HTTP status, stable code, message and extra members."""

    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The SPEC §9 error body."""
        return {"error": {"code": self.code, "message": self.message, **self.extra}}

    @classmethod
    def from_protocol(cls, exc: ProtocolError) -> Self:
        """The refusal of a message the protocol core rejected, with the status of its code."""
        field = getattr(exc, "field", None)
        extra = {"field": field} if field else {}
        return cls(STATUS_BY_CODE.get(exc.code, 400), exc.code, exc.message, **extra)

    @classmethod
    def from_status(cls, status: int, message: str) -> Self:
        """A refusal the HTTP server made itself, with the code of its status."""
        return cls(status, CODE_BY_STATUS.get(status, HTTP_ERROR), message)


def decode_reply(raw: bytes) -> Any:
    """An answer's body as JSON, or ``None`` when it is empty or not JSON."""
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def error_of(body: Any) -> dict[str, Any] | None:
    """The ``error`` member of a SPEC §9 error body, or ``None`` when ``body`` is not one."""
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]  # type: ignore[no-any-return]
    return None


def error_code(body: Any) -> str | None:
    """``error.code`` of a SPEC §9 error body, if there is one and it is a string."""
    code = (error_of(body) or {}).get("code")
    return code if isinstance(code, str) else None
