"""The live device registry: every enrolled device as committed, for the hot paths.

SQLite is the truth; this view is loaded at start and changed only after a write has
committed, so a crash loses nothing but the view itself. ``DeviceRegistry`` is the only
thing that changes it: its ``Device`` entries are frozen, and each change (enrollment,
an accepted heartbeat with its replay counter, a state change, a record count, erasure)
is one method here, so the view could later live outside one process's memory.

Two sources change a device here, in either order: this process's mirror of its own
commit, and ``follow``, which reads the same rows back (this process's commits
included). Each change keeps the later of what it brings and what the view holds — the
higher seq, the larger record count, the state the device lifecycle leads to — so a
commit taken in twice counts once and an older one never takes the view back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, ValuesView
from typing import Any

from aeamc.shared.lifecycle import DEVICE, DeviceState
from aeamc.shared.messages import Capabilities, Telemetry
from aeamc.shared.reputation import Record

from ..groupcommit import GroupCommit
from ..registry import POA_HISTORY, Device
from . import devices as device_rows


class DeviceRegistry:
    """Every enrolled device by id, as committed (see the module docstring)."""

    def __init__(self) -> None:
        self._devices: dict[str, Device] = {}
        #: The latest device change (``device_changes``) this view includes.
        self._cursor = 0

    # -- reading ---------------------------------------------------------------------

    def get(self, device_id: str) -> Device | None:
        """The device ``device_id`` as last committed, or None (never enrolled, erased)."""
        return self._devices.get(device_id)

    def __getitem__(self, device_id: str) -> Device:
        """The device ``device_id`` as last committed; KeyError when there is none."""
        return self._devices[device_id]

    def values(self) -> ValuesView[Device]:
        """Every enrolled device as last committed (a live view: do not hold it across awaits)."""
        return self._devices.values()

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._devices

    def __iter__(self) -> Iterator[str]:
        return iter(self._devices)

    def __len__(self) -> int:
        return len(self._devices)

    # -- changing (only after the write that the change mirrors has committed) ---------

    async def load(self, db: GroupCommit, poa_since: int) -> None:
        """Fill the registry from the database, with the heartbeat times since
        ``poa_since`` that EPS needs; ``follow`` goes on from here."""
        # The cursor first: a change committed while the rows are read is read again.
        self._cursor = await db.read(device_rows.change_cursor)
        rows = await db.read(device_rows.all_devices)
        devices = {r["device_id"]: Device.from_row(r) for r in rows}
        recent = await db.read(lambda d: device_rows.heartbeat_times(d, poa_since))
        times: dict[str, list[int]] = {}
        for device_id, received_at in recent:
            times.setdefault(device_id, []).append(received_at)
        for device_id, seen in times.items():
            if device_id in devices:
                poa = tuple(seen[-POA_HISTORY:])
                devices[device_id] = dataclasses.replace(devices[device_id], poa_times=poa)
        self._devices = devices

    async def follow(self, db: GroupCommit, poa_since: int, limit: int = 5000) -> int:
        """Take in the device writes committed since the last ``load`` or ``follow``, by
        this process or another one on the same database: each changed device is read
        again (a deleted one forgotten), the heartbeats it sent since added to its proofs
        of availability. Reloads everything when the changes were pruned before they were
        read. Returns how many devices changed."""
        got = await db.read(lambda d: device_rows.changes_after(d, self._cursor, limit))
        if got is None:
            await self.load(db, poa_since)
            return len(self._devices)
        cursor, rows = got
        await self._take_in(db, rows, poa_since)
        self._cursor = cursor
        return len(rows)

    async def refresh(self, db: GroupCommit, device_id: str, poa_since: int) -> Device | None:
        """The device as committed now, read again and put in the view (None: not
        enrolled). For a hot path about to refuse on what the view says — unknown,
        pending, quarantined — when another process may have changed it since the last
        ``follow``."""
        row = await db.read(lambda d: device_rows.device_row(d, device_id))
        await self._take_in(db, {device_id: row}, poa_since)
        return self._devices.get(device_id)

    async def _take_in(
        self, db: GroupCommit, rows: dict[str, dict[str, Any] | None], poa_since: int
    ) -> None:
        """Put committed device rows in the view (``None``: the device is gone), with the
        heartbeats each sent since the view last had it."""
        # Heartbeat times to read: the recent ones of a device new to this view, and of a
        # device whose seq moved by more than one (several heartbeats since the view had
        # it) those above its seq. A seq one above the view's: the row has its time.
        after: dict[str, int] = {}
        for device_id, row in rows.items():
            old = self._devices.get(device_id)
            if row is None:
                continue
            if old is None:
                after[device_id] = -1
            elif row["last_seq"] > old.last_seq + 1:
                after[device_id] = old.last_seq
        seen = (
            await db.read(lambda d: device_rows.heartbeat_times_after(d, after, poa_since))
            if after
            else {}
        )
        for device_id, row in rows.items():
            if row is None:
                self._devices.pop(device_id, None)
                continue
            # The view as it is now: a mirror of a later commit may have come in during
            # the read, and the row is no newer than that commit.
            old = self._devices.get(device_id)
            device = Device.from_row(row, old)
            if old is None:
                poa = tuple(t for _, t in seen.get(device_id, ()))
            else:
                poa = (*old.poa_times, *_times_not_held(old, device, seen.get(device_id)))
                device = _newer(old, device)
            self._devices[device_id] = dataclasses.replace(device, poa_times=poa[-POA_HISTORY:])

    def enrolled(
        self,
        device_id: str,
        *,
        public_key: bytes,
        state: str,
        capabilities: Capabilities,
        endpoint: str | None,
        address: str | None,
        now: int,
        pending_since: int,
    ) -> Device:
        """Mirror a committed enrollment: a new device, or the new capabilities, endpoint,
        address and state of an enrolled one (a pending identity enrolled before
        ``pending_since``, expired, starts a new wait for approval at ``now``)."""
        old = self._devices.get(device_id)
        if old is None:
            device = Device(
                device_id=device_id,
                public_key=public_key,
                state=state,
                capabilities=capabilities,
                endpoint=endpoint,
                address=address,
                enrolled_at=now,
            )
        else:
            device = dataclasses.replace(
                old,
                capabilities=capabilities,
                capabilities_json="",
                endpoint=endpoint,
                address=address,
                state=state,
                enrolled_at=(
                    now
                    if state == "pending" and old.enrolled_at < pending_since
                    else old.enrolled_at
                ),
            )
        self._devices[device_id] = device
        return device

    def tags_set(self, device_id: str, tags: list[str]) -> Device | None:
        """Mirror committed operator tags (sorted, distinct); None when the device is gone."""
        old = self._devices.get(device_id)
        if old is None:
            return None
        device = dataclasses.replace(old, operator_tags=tuple(sorted(set(tags))))
        self._devices[device_id] = device
        return device

    def heartbeat_accepted(
        self, device_id: str, seq: int, now: int, telemetry: Telemetry, state: str
    ) -> Device | None:
        """Mirror a committed heartbeat: its seq becomes the replay counter, its time a
        proof of availability, ``state`` its state unless the view already holds a later
        one (``_mirrored``). None when the device is gone meanwhile.

        A heartbeat whose seq the view already has was taken in by ``follow`` first (or
        a later one was): mirrored again, its time would count twice as availability,
        which EPS requires a minimum of before a device gets work."""
        old = self._devices.get(device_id)
        if old is None:
            return None
        if seq <= old.last_seq:
            return old
        device = dataclasses.replace(
            old,
            last_seq=seq,
            last_seen=now,
            telemetry=telemetry,
            state=_mirrored(old.state, state),
            poa_times=(*old.poa_times, now)[-POA_HISTORY:],
        )
        self._devices[device_id] = device
        return device

    def set_state(self, device_id: str, state: str, reason: str) -> Device | None:
        """Mirror a committed state change of ``device_id`` (None when it is gone). A
        change the lifecycle does not allow from the state the view holds is older than
        that state (``_mirrored``) and changes nothing."""
        old = self._devices.get(device_id)
        if old is None:
            return None
        if _mirrored(old.state, state) != state:
            return old
        device = dataclasses.replace(old, state=state, state_reason=reason)
        self._devices[device_id] = device
        return device

    def counted(self, device_id: str, column: str, total: int | None) -> None:
        """Mirror a committed count of ``column`` of the device's record: ``total`` is the
        column as that commit left it (``store.devices.count``; None: the device is gone).

        A total, never an increment: ``follow`` may already have taken in the same commit
        (or a later one) between the commit and this call, and a record only grows, so
        the larger of the two is the committed one."""
        old = self._devices.get(device_id)
        if old is None or total is None or total <= getattr(old.record, column):
            return
        record = dataclasses.replace(old.record, **{column: total})
        self._devices[device_id] = dataclasses.replace(old, record=record)

    def remove(self, device_id: str, *, only_state: str | None = None) -> None:
        """Forget a device whose row was deleted (erasure; ``only_state``: the pending
        sweep forgets it only while it is still in that state here)."""
        device = self._devices.get(device_id)
        if device is not None and (only_state is None or device.state == only_state):
            del self._devices[device_id]


def _mirrored(held: str, committed: str) -> str:
    """The state a mirror of a commit that left ``committed`` gives a device the view
    holds as ``held``: ``committed``, unless the device lifecycle cannot lead from
    ``held`` to it. Then ``follow`` (or another mirror) has already taken in a later
    commit — a quarantine, which nothing leaves — and the view keeps it."""
    if held == committed or DeviceState(committed) in DEVICE[DeviceState(held)]:
        return committed
    return held


def _times_not_held(
    view: Device, row: Device, read: list[tuple[int, int]] | None
) -> tuple[int, ...]:
    """The receive times of the heartbeats ``row`` has and ``view`` does not: of those
    read back (``read``: (seq, time), when the seq moved by more than one), the ones above
    the view's seq; else the row's own, when its seq is the next one."""
    if read is not None:
        return tuple(t for seq, t in read if seq > view.last_seq)
    if row.last_seq == view.last_seq + 1 and row.last_seen is not None:
        return (row.last_seen,)
    return ()


def _newer(view: Device, row: Device) -> Device:
    """``row``, a device as read from the database, with what ``view`` holds that is later
    than it: a row read before a commit this process has since mirrored is older in what
    that commit changed. Heartbeat fields go with the larger seq, a record's counts only
    grow, and a state the lifecycle cannot leave for the row's is kept (``_mirrored``)."""
    if view.last_seq > row.last_seq:
        row = dataclasses.replace(
            row, last_seq=view.last_seq, last_seen=view.last_seen, telemetry=view.telemetry
        )
    record = Record(
        **{
            f.name: max(getattr(view.record, f.name), getattr(row.record, f.name))
            for f in dataclasses.fields(Record)
        }
    )
    if _mirrored(view.state, row.state) != row.state:
        row = dataclasses.replace(row, state=view.state, state_reason=view.state_reason)
    return dataclasses.replace(row, record=record)
