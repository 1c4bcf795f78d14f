"""Feature-flag cohorts (SPEC §10).

A device's bucket depends only on the flag name and its id, so raising a rollout from
10 % to 100 % only ever adds devices, and agent and coordinator agree without talking.
"""

from __future__ import annotations

import hashlib

#: Doubles the heartbeat interval of a device idle on battery (the agent's link reads it).
ADAPTIVE_HEARTBEAT = "adaptive-heartbeat"


def bucket(flag: str, device_id: str) -> int:
    digest = hashlib.sha256(f"{flag}:{device_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 100


def in_rollout(flag: str, device_id: str, percent: int) -> bool:
    if not 0 <= percent <= 100:
        raise ValueError("percent must be 0..100")
    return bucket(flag, device_id) < percent
