"""HTTP-facing errors: a status, a stable code and a message, never internals.

Services raise ``Refusal`` (aeamc.shared.refusals) with a fault and never a status; the
protocol core raises ``ProtocolError``. Both become an ``ApiError`` here, at the edge.
"""

from __future__ import annotations

from typing import Any

from aeamc.shared.errors import ProtocolError
from aeamc.shared.refusals import Fault, Refusal

#: A refusal's fault → HTTP status: the one place a service's refusal becomes a status.
STATUS_BY_FAULT = {
    Fault.INVALID: 400,
    Fault.UNAUTHENTICATED: 401,
    Fault.FORBIDDEN: 403,
    Fault.NOT_FOUND: 404,
    Fault.CONFLICT: 409,
    Fault.GONE: 410,
    Fault.TOO_LARGE: 413,
    Fault.UNPROCESSABLE: 422,
    Fault.TOO_MANY: 429,
    Fault.UNAVAILABLE: 503,
}

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
    def from_refusal(cls, exc: Refusal) -> ApiError:
        return cls(STATUS_BY_FAULT[exc.fault], exc.code, exc.message, **exc.extra)

    @classmethod
    def from_exception(cls, exc: Exception) -> ApiError:
        """The answer to a refusal, a protocol error or an ``ApiError`` itself."""
        if isinstance(exc, ApiError):
            return exc
        if isinstance(exc, Refusal):
            return cls.from_refusal(exc)
        if isinstance(exc, ProtocolError):
            return cls.from_protocol(exc)
        raise TypeError(f"not a refusal: {exc!r}")

    @classmethod
    def from_protocol(cls, exc: ProtocolError) -> ApiError:
        field = getattr(exc, "field", None)
        extra = {"field": field} if field else {}
        return cls(STATUS_BY_CODE.get(exc.code, 400), exc.code, exc.message, **extra)


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"{what} not found")


def http_status(exc: Exception) -> int:
    """The HTTP status a refusal, protocol error or ``ApiError`` is answered with."""
    return ApiError.from_exception(exc).status
