"""HTTP-facing errors: a status, a stable code and a message, never internals.

Services raise ``Refusal`` (aeamc.shared.refusals) with a fault and never a status; the
protocol core raises ``ProtocolError``. Both become an ``ApiError`` here, at the edge. The
envelope itself (its body, codes and protocol statuses) is shared with the agent
(``aeamc.shared.envelope``).
"""

from __future__ import annotations

from aiohttp import web

from aeamc.shared import envelope
from aeamc.shared.envelope import STATUS_BY_CODE
from aeamc.shared.errors import ProtocolError
from aeamc.shared.refusals import Fault, Refusal

__all__ = ["STATUS_BY_CODE", "STATUS_BY_FAULT", "ApiError", "http_status", "retry_later"]

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


class ApiError(envelope.ApiError):
    """The shared envelope's ``ApiError``, also made from a service's ``Refusal``."""

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


def http_status(exc: Exception) -> int:
    """The HTTP status a refusal, protocol error or ``ApiError`` is answered with."""
    return ApiError.from_exception(exc).status


def retry_later(code: str, message: str, retry_after_s: int = 1) -> web.Response:
    """A ``503`` in the API's error shape with ``Retry-After``: the request was not carried
    out now and may be sent again after that many seconds (load shed, no leader, the
    database out of reach)."""
    body = ApiError(503, code, message, retry_after_s=retry_after_s).body()
    return web.json_response(body, status=503, headers={"Retry-After": str(retry_after_s)})
