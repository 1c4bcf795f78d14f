"""Staged rollouts of agent releases: which devices are offered a release, what they
reported, and the automatic halt.

A release published in the TUF repository is offered through the feature flag
``release-<version>`` (SPEC §10 cohorts, so raising the percent only adds devices).
Devices report each attempt with a signed ``update_report``; once the share of targeted
devices that failed passes ``updates.halt_failure_share``, the rollout halts: its flag
goes to 0 % (audited as ``auto-halt``), so no further device starts the update, while
devices that run it already keep it.

Only the rollout's own devices move it: a report is taken from an approved device (active,
or stale: approved but missing heartbeats, as one that just rolled back may be) in the
release's cohort, over that device's own TLS client certificate; anyone else is refused
and nothing is stored. Progress counts the reports of the devices that are still such
devices (a device quarantined after it reported stops counting; an erased one's reports
are deleted). After the operator resumes a halted rollout, only failures reported after
the resume can halt it again: the operator has already weighed the earlier ones.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from aeamc.shared.flags import in_rollout
from aeamc.shared.messages import parse_signed
from aeamc.shared.refusals import Fault, Refusal, not_found
from aeamc.shared.releases import (
    FAILED_OUTCOMES,
    HALTED,
    ROLLING,
    UPDATED,
    Progress,
    UpdateReport,
    flag_for,
    should_halt,
)
from aeamc.shared.runtime.tls import Peer
from aeamc.shared.versions import is_version, version_key

from ..attached import UPDATES
from ..dbtx import Tx, insert
from ..service import Coordinator
from . import reports
from .repository import Repository, RepositoryError

log = logging.getLogger(__name__)

AUTO_HALT = "auto-halt"
#: A report dated this far in the future is refused (the device clock is off).
MAX_FUTURE_MS = 5 * 60 * 1000
#: Device states whose reports are taken and counted: approved by the operator and not
#: quarantined (a stale device is an approved one whose heartbeats stopped for a while).
COUNTED_STATES = frozenset({"active", "stale"})


class Rollouts:
    """Releases and their rollouts; attached to the coordinator as its ``rollouts`` and
    as the ``updates`` section of its status summary."""

    status_name = UPDATES

    def __init__(self, coordinator: Coordinator, repository: Repository) -> None:
        self.c = coordinator
        self.repo = repository
        #: version → release row (percent, state, published/halted at, by, reason).
        self.releases: dict[str, dict[str, Any]] = {}
        #: version → device → (its latest outcome, when it was received), for status and
        #: metrics without a query; counted through ``progress`` (cohort and state rules).
        self.reports: dict[str, dict[str, tuple[str, int]]] = {}
        self._lock = asyncio.Lock()

    async def load(self) -> None:
        rows = await self.c.db.read(lambda db: list(db.query("SELECT * FROM releases")))
        self.releases = {r["version"]: r for r in rows}
        reports = await self.c.db.read(
            lambda db: list(
                db.query("SELECT release, device_id, outcome, received_at FROM update_reports")
            )
        )
        self.reports = {}
        for r in reports:
            self.reports.setdefault(r["release"], {})[r["device_id"]] = (
                r["outcome"],
                r["received_at"],
            )

    # -- views ---------------------------------------------------------------------------

    def fleet_versions(self) -> dict[str, int]:
        """Devices by the agent version they last enrolled with (no per-device detail)."""
        counts: Counter[str] = Counter(
            d.capabilities.version for d in self.c.devices.values() if d.capabilities
        )
        return dict(sorted(counts.items(), key=lambda kv: _sort_key(kv[0])))

    def targeted(self, version: str) -> set[str]:
        """The devices whose reports count: approved, not quarantined, in the cohort."""
        flag, percent = flag_for(version), self.releases[version]["percent"]
        return {
            d.device_id
            for d in self.c.devices.values()
            if d.state in COUNTED_STATES and in_rollout(flag, d.device_id, percent)
        }

    def progress(self, version: str, *, since: int = 0) -> Progress:
        """Where the rollout stands among its targeted devices (``targeted``); updated
        and failed count only their reports, received at ``since`` or later, so the
        failure share never exceeds 1 whoever else once reported."""
        targeted = self.targeted(version)
        outcomes: Counter[str] = Counter(
            outcome
            for device_id, (outcome, received_at) in self.reports.get(version, {}).items()
            if device_id in targeted and received_at >= since
        )
        running = len(
            [
                d
                for d in self.c.devices.values()
                if d.capabilities and d.capabilities.version == version
            ]
        )
        return Progress(
            targeted=len(targeted),
            updated=outcomes[UPDATED],
            failed=sum(outcomes[o] for o in FAILED_OUTCOMES),
            running=running,
        )

    def view(self, version: str) -> dict[str, Any]:
        r = self.releases[version]
        return {
            "version": version,
            "flag": flag_for(version),
            "percent": r["percent"],
            "state": r["state"],
            "published_at": r["published_at"],
            "published_by": r["published_by"],
            "halted_at": r["halted_at"],
            "halt_reason": r["halt_reason"],
            "progress": self.progress(version).to_dict(),
        }

    def list(self) -> list[dict[str, Any]]:
        return [self.view(v) for v in sorted(self.releases, key=version_key)]

    async def detail(self, version: str) -> dict[str, Any]:
        self._known(version)
        rows = await self.c.db.read(
            lambda db: list(
                db.query(
                    "SELECT device_id, version, outcome, detail, timestamp, received_at "
                    "FROM update_reports WHERE release=? ORDER BY device_id",
                    [version],
                )
            )
        )
        targeted = self.targeted(version)
        for r in rows:
            r["counted"] = r["device_id"] in targeted
        return {**self.view(version), "reports": rows}

    async def status(self) -> dict[str, Any]:
        """The ``updates`` section of ``/v1/status``."""
        repo: dict[str, Any] = {"initialised": self.repo.exists}
        if self.repo.exists:
            repo["versions"] = await asyncio.to_thread(self.repo.versions)
            repo["expires"] = await asyncio.to_thread(self.repo.expiries)
        return {
            "fleet_versions": self.fleet_versions(),
            "releases": self.list(),
            "repository": repo,
        }

    # -- operator actions -------------------------------------------------------------------

    async def register(self, version: Any, percent: Any, by: str) -> dict[str, Any]:
        """Start offering a release the repository holds, to ``percent`` of the fleet."""
        if not isinstance(version, str) or not is_version(version):
            raise Refusal(Fault.INVALID, "invalid_message", "version: like 1.2.3", field="version")
        _check_percent(percent)
        try:
            published = await asyncio.to_thread(self.repo.has_release, version)
        except RepositoryError as exc:
            raise Refusal(Fault.CONFLICT, "no_repository", str(exc)) from None
        if not published:
            raise Refusal(
                Fault.CONFLICT,
                "not_published",
                f"release {version} is not in the update repository: "
                "publish it first (aeamc-coordinator release publish)",
            )
        async with self._lock:
            if version in self.releases:
                raise Refusal(Fault.CONFLICT, "exists", f"release {version} is already rolling out")
            now = self.c.clock()
            row = {
                "version": version,
                "percent": percent,
                "state": ROLLING,
                "published_at": now,
                "published_by": by,
                "halted_at": None,
                "halt_reason": None,
                "counted_from": 0,
            }
            await self.c.db.write(lambda db: insert(db, "releases", row))
            self.releases[version] = row
            await self.c.flags.set_flag(flag_for(version), percent, by)
        log.info("release %s rolling out to %d %% by %s", version, percent, by)
        return self.view(version)

    async def set_percent(self, version: str, percent: Any, by: str) -> dict[str, Any]:
        """Widen, narrow or resume a rollout (a halted one rolls again)."""
        self._known(version)
        _check_percent(percent)
        async with self._lock:
            release = self.releases[version]
            # A resume starts a new count: failures reported before it cannot re-halt.
            counted_from = self.c.clock() if release["state"] == HALTED else release["counted_from"]

            def txn(db: Tx) -> None:
                db.execute(
                    "UPDATE releases SET percent=?, state=?, halted_at=NULL, halt_reason=NULL, "
                    "counted_from=? WHERE version=?",
                    [percent, ROLLING, counted_from, version],
                )

            await self.c.db.write(txn)
            release.update(
                percent=percent,
                state=ROLLING,
                halted_at=None,
                halt_reason=None,
                counted_from=counted_from,
            )
            await self.c.flags.set_flag(flag_for(version), percent, by)
        log.info("release %s rollout set to %d %% by %s", version, percent, by)
        return self.view(version)

    async def halt(self, version: str, reason: str, by: str) -> dict[str, Any]:
        """No further device starts this update; those that run it keep it."""
        self._known(version)
        async with self._lock:
            await self._halt(version, reason, by)
        return self.view(version)

    async def _halt(self, version: str, reason: str, by: str) -> None:
        now = self.c.clock()

        def txn(db: Tx) -> None:
            db.execute(
                "UPDATE releases SET state=?, halted_at=?, halt_reason=? WHERE version=?",
                [HALTED, now, reason, version],
            )

        await self.c.db.write(txn)
        self.releases[version].update(state=HALTED, halted_at=now, halt_reason=reason)
        await self.c.flags.set_flag(flag_for(version), 0, by)
        log.warning("rollout of release %s halted by %s: %s", version, by, reason)

    # -- devices -----------------------------------------------------------------------------

    async def report(self, data: Any, peer: Peer | None) -> dict[str, Any]:
        """Take a device's signed word on a release, and halt the rollout if too many of
        its targeted devices failed since it last started rolling.

        Refused, with nothing stored or counted: an unknown or forged sender (403
        ``not_enrolled``, 401 ``bad_signature``), a pending or quarantined device (403
        ``pending``, ``quarantined``), a request without the device's own client
        certificate (401 ``certificate_required``, 403 ``certificate_mismatch`` or
        ``certificate_revoked``) and a device outside the release's cohort (403
        ``not_in_cohort``): none of them may stop a rollout the fleet needs.
        """
        msg = parse_signed(data, UpdateReport)
        device = self.c.devices.get(msg.device_id)
        if device is None:
            raise Refusal(Fault.FORBIDDEN, "not_enrolled", "unknown device: enroll first")
        msg.verify(device.public_key)
        now = self.c.clock()
        if msg.timestamp > now + MAX_FUTURE_MS:
            raise Refusal(Fault.INVALID, "stale_message", "the report is dated in the future")
        if device.state == "pending":
            raise Refusal(Fault.FORBIDDEN, "pending", "enrollment awaits the operator's approval")
        if device.state not in COUNTED_STATES:
            raise Refusal(Fault.FORBIDDEN, "quarantined", "this device is quarantined")
        self.c.check_peer(peer, msg.device_id)
        if msg.release not in self.releases:
            raise not_found(f"release {msg.release}")
        release = self.releases[msg.release]
        if not in_rollout(flag_for(msg.release), msg.device_id, release["percent"]):
            raise Refusal(
                Fault.FORBIDDEN,
                "not_in_cohort",
                f"this device is not in the rollout of {msg.release}",
            )
        async with self._lock:
            changed = await self.c.db.write(lambda db: reports.upsert_report(db, msg, now))
            if changed:
                self.reports.setdefault(msg.release, {})[msg.device_id] = (msg.outcome, now)
            progress = self.progress(msg.release, since=release["counted_from"])
            threshold = self.c.config.updates.halt_failure_share
            min_failures = self.c.config.updates.halt_min_failures
            if release["state"] == ROLLING and should_halt(progress, threshold, min_failures):
                await self._halt(
                    msg.release,
                    f"{progress.failed} of {progress.targeted} targeted devices failed "
                    f"(over {threshold:.0%})",
                    AUTO_HALT,
                )
        log.info(
            "device %s: release %s %s (running %s)%s",
            msg.device_id,
            msg.release,
            msg.outcome,
            msg.version,
            f": {msg.detail}" if msg.detail else "",
        )
        return {"release": msg.release, "outcome": msg.outcome, "recorded": changed}

    def _known(self, version: str) -> None:
        if version not in self.releases:
            raise not_found(f"release {version}")

    # -- the repository's online roles ------------------------------------------------------

    async def keep_fresh(self) -> None:
        """Re-sign snapshot and timestamp before they expire, for as long as we run."""
        while True:
            try:
                if self.repo.exists:
                    done = await asyncio.to_thread(self.repo.refresh_online)
                    if done:
                        log.info("update metadata re-signed: %s", ", ".join(done))
            except Exception:
                log.exception("re-signing the update metadata failed")
            await asyncio.sleep(self.c.config.updates.resign_check_s)


def _check_percent(percent: Any) -> None:
    if not isinstance(percent, int) or isinstance(percent, bool) or not 0 <= percent <= 100:
        raise Refusal(
            Fault.INVALID, "invalid_message", "percent: an integer 0..100", field="percent"
        )


def _sort_key(version: str) -> tuple[Any, ...]:
    return (0, version_key(version)) if is_version(version) else (1, version)


class UpdatesCollector(Collector):
    """Fleet versions and rollout progress as gauges: labels are versions, never devices."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator

    def collect(self) -> Iterator[Metric]:
        rollouts = self.c.rollouts
        if not isinstance(rollouts, Rollouts):
            return
        versions = GaugeMetricFamily(
            "aeamc_coordinator_agent_versions",
            "Enrolled devices by the agent version they run",
            labels=["version"],
        )
        for version, n in rollouts.fleet_versions().items():
            versions.add_metric([version], n)
        yield versions
        devices = GaugeMetricFamily(
            "aeamc_coordinator_rollout_devices",
            "Devices of each release's rollout: targeted, updated, failed",
            labels=["release", "status"],
        )
        halted = GaugeMetricFamily(
            "aeamc_coordinator_rollout_halted",
            "1 if the release's rollout is halted",
            labels=["release"],
        )
        for version in sorted(rollouts.releases, key=version_key):
            p = rollouts.progress(version)
            for status, n in (
                ("targeted", p.targeted),
                ("updated", p.updated),
                ("failed", p.failed),
            ):
                devices.add_metric([version, status], n)
            halted.add_metric([version], int(rollouts.releases[version]["state"] == HALTED))
        yield devices
        yield halted
