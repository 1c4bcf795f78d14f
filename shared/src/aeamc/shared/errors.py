"""Exceptions raised by the protocol core.

Every error carries a stable machine-readable ``code`` so the shells can map it to an
HTTP error body (SPEC §9) or an exit status without parsing messages.
"""

from __future__ import annotations

from typing import Any


class ProtocolError(Exception):
    """Base class: the input violates the protocol; nothing should change because of it."""

    code = "protocol_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0])


class ValidationError(ProtocolError):
    """A message or parameter is malformed; ``field`` names where (dotted path)."""

    code = "invalid_message"

    def __init__(self, field: str, message: str, *, code: str | None = None) -> None:
        self.field = field
        self.reason = message
        super().__init__(f"{field}: {message}" if field else message, code=code)


class SignatureError(ProtocolError):
    """The signature does not verify, or the key does not fit the claimed id."""

    code = "bad_signature"


class FreshnessError(ProtocolError):
    """A timestamp lies outside the accepted window (a stale or future message)."""

    code = "stale_message"


class ReplayError(ProtocolError):
    """The message was seen before (non-increasing ``seq``, second PoT for a task)."""

    code = "replay"


class ProofError(ProtocolError):
    """A Proof-of-Task or an opening is inconsistent with its commitments."""

    code = "bad_proof"


class MicroblockError(ProtocolError):
    """Bytes that do not parse exactly as a v1 microblock (SPEC §6)."""

    code = "bad_microblock"


class TaskParamsError(ValidationError):
    """Task parameters the kind cannot run."""

    code = "bad_params"


class ChunkFault(ProtocolError):
    """A chunk has no output: its kind's computation stops without one, the same way on
    every machine (a WASM kernel out of fuel, for one). A device that claims an output for
    such a chunk claims something no honest run gives."""

    code = "chunk_fault"

    def __reduce__(self) -> tuple[Any, ...]:
        # Raised in the agent's worker process: its code must survive the trip back.
        return (self.__class__, self.args, {"code": self.code})


class UnknownTaskKind(ProtocolError):
    code = "unknown_kind"


class IllegalTransition(Exception):
    """A state change that its lifecycle's table does not hold (``aeamc.shared.lifecycle``).

    Not a :class:`ProtocolError`: no peer's input can cause it, only code that asked for a
    transition the protocol forbids, so the shells treat it as their own fault.
    """

    code = "illegal_transition"

    def __init__(self, lifecycle: str, old: str | None, new: str) -> None:
        self.lifecycle, self.old, self.new = lifecycle, old, new
        what = f"a new {lifecycle} cannot start as {new}" if old is None else f"{old} → {new}"
        super().__init__(f"illegal {lifecycle} transition: {what}")
