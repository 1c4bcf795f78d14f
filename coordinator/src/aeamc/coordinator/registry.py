"""A device as the hot paths see it: one entry of the live registry.

SQLite is the truth; the entries are loaded at start and replaced only after a write has
committed, so a crash can lose nothing but the view itself. ``Device`` is frozen all the
way down (its heartbeat times are a tuple): only ``store.registry.DeviceRegistry`` makes
a changed copy and puts it in place, so an entry a reader holds never changes under it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from aeamc.shared.eps import Candidate
from aeamc.shared.messages import Capabilities, Telemetry, parse
from aeamc.shared.placement import Needs, misfit
from aeamc.shared.reputation import Record, reputation

POA_HISTORY = 16


@dataclass(frozen=True)
class Device:
    device_id: str
    public_key: bytes
    state: str
    capabilities: Capabilities
    endpoint: str | None
    address: str | None
    enrolled_at: int
    last_seq: int = -1
    last_seen: int | None = None
    telemetry: Telemetry | None = None
    record: Record = field(default_factory=Record)
    state_reason: str | None = None
    #: The latest heartbeat times (at most ``POA_HISTORY``), oldest first.
    poa_times: tuple[int, ...] = ()
    #: The tags the operator gave the device (its own are in its capabilities).
    operator_tags: tuple[str, ...] = ()
    #: The stored text of ``capabilities`` when read from a row ("" otherwise).
    capabilities_json: str = field(default="", compare=False)

    @property
    def quarantined(self) -> bool:
        """Whether the device is quarantined: it gets no work, and what it sends is refused."""
        return self.state == "quarantined"

    def misfit(self, needs: Needs) -> str | None:
        """Why this device cannot take a task needing ``needs`` (SPEC §4.1), or None."""
        return misfit(self.capabilities, self.operator_tags, needs)

    @property
    def reputation(self) -> float:
        return reputation(self.record)

    def candidate(self, busy: bool) -> Candidate:
        return Candidate(
            device_id=self.device_id,
            state=self.state,
            telemetry=self.telemetry,
            poa_times=list(self.poa_times),
            kinds=frozenset(self.capabilities.kinds),
            busy=busy,
            reputation=self.reputation,
        )

    @classmethod
    def from_row(cls, row: dict[str, Any], like: Device | None = None) -> Device:
        """The device a ``devices`` row holds. ``like``: the same device as read before,
        whose parsed capabilities and telemetry are reused where the row still holds them
        (following other processes' writes re-reads a device at each of its heartbeats)."""
        if like is not None and like.last_seq == row["last_seq"]:
            telemetry = like.telemetry
        else:
            telemetry = parse(Telemetry, json.loads(row["telemetry"])) if row["telemetry"] else None
        if like is not None and like.capabilities_json == row["capabilities"]:
            capabilities = like.capabilities
        else:
            capabilities = parse(Capabilities, json.loads(row["capabilities"]))
        return cls(
            device_id=row["device_id"],
            public_key=bytes.fromhex(row["public_key"]),
            state=row["state"],
            capabilities=capabilities,
            capabilities_json=row["capabilities"],
            endpoint=row["endpoint"],
            address=row["address"],
            enrolled_at=row["enrolled_at"],
            last_seq=row["last_seq"],
            last_seen=row["last_seen"],
            telemetry=telemetry,
            record=Record(
                passes=row["passes"],
                failures=row["failures"],
                unanswered=row["unanswered"],
                timeouts=row["timeouts"],
                refusals=row["refusals"],
                completed=row["completed"],
            ),
            state_reason=row["state_reason"],
            operator_tags=tuple(json.loads(row["tags"])) if row.get("tags") else (),
        )
