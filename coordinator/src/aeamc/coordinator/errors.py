"""HTTP-facing errors: a status, a stable code and a message, never internals.

The envelope itself is shared with the agent (``aeamc.shared.envelope``).
"""

from __future__ import annotations

from aeamc.shared.envelope import STATUS_BY_CODE, ApiError

__all__ = ["STATUS_BY_CODE", "ApiError", "not_found"]


def not_found(what: str) -> ApiError:
    """404 ``not_found``: ``what`` does not exist (or is not the caller's to see)."""
    return ApiError(404, "not_found", f"{what} not found")
