"""The live device registry (coordinator store/registry.py): the only way its entries change.

Entries are frozen ``Device`` values; each committed change replaces one. The replay
counter (``last_seq``) only ever rises, and the pending sweep forgets only a device that
is still pending in the registry.
"""

from __future__ import annotations

import dataclasses

import pytest

from aeamc.coordinator.registry import Device
from aeamc.coordinator.store.registry import DeviceRegistry
from aeamc.shared.messages import Capabilities, Telemetry, parse
from tests.support.device import GOOD_TELEMETRY

CAPS = Capabilities(
    kinds=("sha256-chain",), cpus=4, mem_mb=1024, battery=True, version="1.0", endpoint=None
)
TELEMETRY = parse(Telemetry, GOOD_TELEMETRY)


def _enrolled(registry: DeviceRegistry, state: str = "active", now: int = 1_000) -> Device:
    return registry.enrolled(
        "dev-1",
        public_key=b"\x01" * 32,
        state=state,
        capabilities=CAPS,
        endpoint=None,
        address="10.0.0.2",
        now=now,
        pending_since=0,
    )


def test_entries_are_frozen() -> None:
    device = _enrolled(DeviceRegistry())
    with pytest.raises(dataclasses.FrozenInstanceError):
        device.state = "stale"  # type: ignore[misc]


def test_heartbeat_raises_the_replay_counter_and_never_lowers_it() -> None:
    registry = DeviceRegistry()
    _enrolled(registry, state="stale")
    after = registry.heartbeat_accepted("dev-1", 7, 2_000, TELEMETRY, "active")
    assert after is not None
    assert (after.last_seq, after.last_seen, after.state) == (7, 2_000, "active")
    assert list(after.poa_times) == [2_000]
    registry.heartbeat_accepted("dev-1", 5, 3_000, TELEMETRY, "active")
    current = registry.get("dev-1")
    assert current is not None and current.last_seq == 7
    assert registry.heartbeat_accepted("nobody", 1, 1, TELEMETRY, "active") is None


def test_state_and_record_changes_replace_the_entry() -> None:
    registry = DeviceRegistry()
    before = _enrolled(registry)
    registry.counted("dev-1", "completed", 1)
    registry.set_state("dev-1", "quarantined", "failed spot-check")
    after = registry.get("dev-1")
    assert after is not None
    assert (after.state, after.state_reason, after.record.completed) == (
        "quarantined",
        "failed spot-check",
        1,
    )
    assert (before.state, before.record.completed) == ("active", 0)


def test_a_count_is_mirrored_as_the_committed_total_never_lowered() -> None:
    """The same commit taken in twice (the writer's mirror, the follower's read) counts
    once; an older total arriving after a newer one changes nothing."""
    registry = DeviceRegistry()
    _enrolled(registry)
    registry.counted("dev-1", "passes", 2)
    registry.counted("dev-1", "passes", 2)
    registry.counted("dev-1", "passes", 1)
    registry.counted("dev-1", "passes", None)  # the device's row was gone at the commit
    registry.counted("nobody", "passes", 5)
    device = registry.get("dev-1")
    assert device is not None and device.record.passes == 2
    assert "nobody" not in registry


def test_reenrolling_an_expired_pending_identity_restarts_its_wait() -> None:
    registry = DeviceRegistry()
    _enrolled(registry, state="pending", now=1_000)
    again = registry.enrolled(
        "dev-1",
        public_key=b"\x01" * 32,
        state="pending",
        capabilities=CAPS,
        endpoint=None,
        address="10.0.0.3",
        now=9_000,
        pending_since=5_000,
    )
    assert (again.enrolled_at, again.address) == (9_000, "10.0.0.3")


def test_the_pending_sweep_forgets_only_pending_devices() -> None:
    registry = DeviceRegistry()
    _enrolled(registry, state="active")
    registry.remove("dev-1", only_state="pending")
    assert "dev-1" in registry
    registry.remove("dev-1")
    assert "dev-1" not in registry and len(registry) == 0


def test_a_mirror_never_takes_a_device_out_of_quarantine() -> None:
    """A heartbeat or state change committed before a quarantine, mirrored after the
    view took the quarantine in (its own mirror, or the follower), is older than it."""
    registry = DeviceRegistry()
    _enrolled(registry)
    registry.set_state("dev-1", "quarantined", "failed spot-check")
    registry.heartbeat_accepted("dev-1", 9, 5_000, TELEMETRY, "active")
    assert registry.set_state("dev-1", "stale", "missed heartbeats") is not None
    device = registry.get("dev-1")
    assert device is not None
    assert (device.state, device.state_reason, device.last_seq) == (
        "quarantined",
        "failed spot-check",
        9,
    )
    registry.set_state("dev-1", "quarantined", "again")
    after = registry.get("dev-1")
    assert after is not None and after.state_reason == "again"
