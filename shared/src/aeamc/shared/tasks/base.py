"""The contract every task kind fulfils (SPEC §3).

A kind is a pure, deterministic function from (params, chunk index) to bytes. The agent
calls it to do the work and the coordinator calls the very same code to re-execute opened
chunks during a spot-check, so any platform dependence is a verification failure.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from ..errors import TaskParamsError, ValidationError


@runtime_checkable
class TaskKind(Protocol):
    """A deterministic chunked computation.

    ``validate_params`` must reject (``TaskParamsError`` naming the field) anything
    ``run_chunk`` could not process, so a bad task is refused at submission and never
    reaches a device. ``run_chunk`` may assume validated params.
    """

    name: str

    def validate_params(self, params: Mapping[str, Any], chunks: int) -> None: ...

    def run_chunk(self, params: Mapping[str, Any], index: int, chunks: int) -> bytes: ...


def check_params(validator: Any, params: Mapping[str, Any]) -> Any:
    """Run a schema validator over ``params``, reporting failures as ``TaskParamsError``."""
    try:
        return validator(params, "params")
    except TaskParamsError:
        raise
    except ValidationError as exc:
        raise TaskParamsError(exc.field, exc.reason) from None
