"""HTTP-facing errors: a status, a stable code and a message, never internals."""

from __future__ import annotations

from typing import Any

from aeamc.shared.errors import ProtocolError

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


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}

    @classmethod
    def from_protocol(cls, exc: ProtocolError) -> ApiError:
        field = getattr(exc, "field", None)
        extra = {"field": field} if field else {}
        return cls(STATUS_BY_CODE.get(exc.code, 400), exc.code, exc.message, **extra)


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")
