"""Refusals: what a service says when it will not do what it was asked, and whose fault.

A service never picks a transport status. It raises ``Refusal`` with a ``Fault`` (the
caller sent something invalid, is not who it must be, may not do this, names what does
not exist, conflicts with what is there, asks for what is gone, sends too much or too
often; or we cannot serve now) plus a stable ``code`` and a message for people. The HTTP
edge maps each fault to a status in one table; a CLI maps it to an exit status.
"""

from __future__ import annotations

import enum
from typing import Any


class Fault(enum.Enum):
    """Why a request was refused; every fault but ``UNAVAILABLE`` is the caller's."""

    INVALID = "invalid"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    CONFLICT = "conflict"
    GONE = "gone"
    TOO_LARGE = "too_large"
    UNPROCESSABLE = "unprocessable"
    TOO_MANY = "too_many"
    UNAVAILABLE = "unavailable"


class Refusal(Exception):
    """The request changes nothing: ``fault`` says whose fault and what kind, ``code`` is
    stable for programs, ``message`` is for people, ``extra`` members go into the answer."""

    def __init__(self, fault: Fault, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.fault = fault
        self.code = code
        self.message = message
        self.extra = extra


def not_found(what: str) -> Refusal:
    """The refusal for something that does not exist (or that the caller may not see)."""
    return Refusal(Fault.NOT_FOUND, "not_found", f"{what} not found")
