"""Where a task may run (SPEC §4.1), pure: a task's needs against a device's offer.

A task needs its kind; a ``wasm`` task also needs its per-chunk memory and fuel and its
module's size within the limits the device's owner set; a client may add tags and a
least number of CPUs or amount of memory (``requires``). A device offers its advertised
capabilities plus the tags the operator gave it. The scheduler offers a task only where
``misfit`` finds nothing; the device still checks what it can see itself (its owner's
limits, the client), because an offer is the coordinator's claim, not the device's.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .labels import MAX_TAGS, TAG_PATTERN
from .messages import Capabilities
from .schema import array, integer, optional, record, text

#: A task's ``requires``: what its client asks of a device beyond what the task implies.
REQUIRES = record(
    {
        "tags": optional(array(text(24, TAG_PATTERN), MAX_TAGS)),
        "min_cpus": optional(integer(1, 4096)),
        "min_mem_mb": optional(integer(0, 1 << 30)),
    },
    dict,
)


@dataclass(frozen=True, slots=True)
class Needs:
    """What a task asks of the device that runs it."""

    kind: str
    #: The owner id of the task's client (None: a task from before clients had ids).
    client: str | None = None
    tags: frozenset[str] = frozenset()
    min_cpus: int = 1
    min_mem_mb: int = 0
    #: Per chunk, for ``wasm`` tasks only.
    memory_mb: int | None = None
    fuel: int | None = None
    module_bytes: int | None = None

    @classmethod
    def of_task(
        cls,
        kind: str,
        params: Mapping[str, Any],
        requires: Mapping[str, Any] | None,
        *,
        client: str | None,
        module_bytes: int | None = None,
    ) -> Needs:
        """The needs of a task as submitted (``requires`` already checked by ``REQUIRES``)."""
        req = requires or {}
        wasm = kind == "wasm"
        return cls(
            kind=kind,
            client=client,
            tags=frozenset(req.get("tags", ())),
            min_cpus=req.get("min_cpus", 1),
            min_mem_mb=req.get("min_mem_mb", 0),
            memory_mb=params.get("memory_mb") if wasm else None,
            fuel=params.get("fuel") if wasm else None,
            module_bytes=module_bytes if wasm else None,
        )

    @classmethod
    def of_stored(
        cls, kind: str, params: Mapping[str, Any], placement: Mapping[str, Any], owner: str | None
    ) -> Needs:
        """The needs of a task as the coordinator keeps it: ``placement`` is its client's
        ``requires`` plus, for a WASM task, ``module_bytes``; ``owner`` its owner id
        (empty or None for a task from before owners)."""
        requires = {k: v for k, v in placement.items() if k != "module_bytes"}
        return cls.of_task(
            kind,
            params,
            requires,
            client=owner or None,
            module_bytes=placement.get("module_bytes"),
        )


def device_tags(caps: Capabilities, operator_tags: Iterable[str] = ()) -> frozenset[str]:
    """A device's tags: those its owner configured and those the operator gave it."""
    return frozenset(caps.tags or ()) | frozenset(operator_tags)


def misfit(caps: Capabilities, operator_tags: Iterable[str], needs: Needs) -> str | None:
    """Why a device offering ``caps`` (and the operator's tags) cannot take a task that
    ``needs`` this, or None when it can. The reason names the first unmet need.

    A device that advertises ``wasm`` without limits (an agent older than them) is taken
    to allow any: it checks its own limits when offered the task and refuses without
    blame, as before limits were advertised."""
    if needs.kind not in caps.kinds:
        return f"does not run {needs.kind}"
    if caps.clients is not None and needs.client not in caps.clients:
        return "does not accept this client's work"
    missing = needs.tags - device_tags(caps, operator_tags)
    if missing:
        return "lacks the tag" + ("s " if len(missing) > 1 else " ") + ", ".join(sorted(missing))
    if caps.cpus < needs.min_cpus:
        return f"has {caps.cpus} CPUs, the task needs {needs.min_cpus}"
    if caps.mem_mb < needs.min_mem_mb:
        return f"has {caps.mem_mb} MiB of memory, the task needs {needs.min_mem_mb}"
    w = caps.wasm
    if w is not None:
        if needs.memory_mb is not None and needs.memory_mb > w.max_memory_mb:
            return f"allows {w.max_memory_mb} MiB per chunk, the task asks {needs.memory_mb}"
        if needs.fuel is not None and needs.fuel > w.max_fuel:
            return f"allows {w.max_fuel} fuel per chunk, the task asks {needs.fuel}"
        if needs.module_bytes is not None and needs.module_bytes > w.max_module_bytes:
            return (
                f"allows modules of {w.max_module_bytes} bytes, the task's has {needs.module_bytes}"
            )
    return None
