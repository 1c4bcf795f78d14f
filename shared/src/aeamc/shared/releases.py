"""Fleet updates (SPEC §13; cohorts §10): versions, rollout cohorts, halting, update reports.

Pure decisions shared by the coordinator and the agent:

- every agent release ``V`` is rolled out through the feature flag ``release-V``, so a
  device's cohort is the §10 bucket of that flag and raising 10 % → 100 % only adds
  devices;
- an agent takes the newest release offered to it (its flag on) that is newer than what
  it runs and that has not failed on it before;
- a rollout halts, hawkBit-style, once the share of the targeted devices that failed
  it passes the configured threshold;
- the outcome of an update attempt travels as an ``update_report`` signed by the device.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from .messages import SignedMessage, device_id_field, signature_field, timestamp_field
from .schema import constant, text

# Re-exported: versions and their order are defined apart, for the agent's launcher.
from .versions import VERSION, VERSION_PATTERN, is_version, newer, version_key  # noqa: F401

FLAG_PREFIX = "release-"
#: Where a release's files live in the TUF repository: ``agent/<version>/<file>``.
TARGET_PREFIX = "agent/"
#: Where the coordinator serves the TUF metadata and the release files (under its URL).
METADATA_PATH = "/v1/updates/metadata/"
MANIFEST_NAME = "release.json"

#: Outcomes a device reports for a release.
UPDATED, ROLLED_BACK, REFUSED = "updated", "rolled_back", "refused"
OUTCOMES = (UPDATED, ROLLED_BACK, REFUSED)
FAILED_OUTCOMES = (ROLLED_BACK, REFUSED)

#: States of a rollout on the coordinator.
ROLLING, HALTED = "rolling", "halted"


def flag_for(version: str) -> str:
    """The feature flag whose cohort a release is rolled out to."""
    if not is_version(version):
        raise ValueError(f"{version!r} is not a release version")
    return FLAG_PREFIX + version


def version_of_flag(flag: str) -> str | None:
    if not flag.startswith(FLAG_PREFIX):
        return None
    version = flag[len(FLAG_PREFIX) :]
    return version if is_version(version) else None


def manifest_path(version: str) -> str:
    return f"{TARGET_PREFIX}{version}/{MANIFEST_NAME}"


def target_path(version: str, filename: str) -> str:
    return f"{TARGET_PREFIX}{version}/{filename}"


def choose_release(
    flags: Mapping[str, bool], current: str, failed: Iterable[str] = ()
) -> str | None:
    """The release this device should move to now, if any.

    Only releases whose flag the coordinator turned on for this device count, only newer
    ones (a release never downgrades a device), and never one that already failed here.
    """
    skip = set(failed)
    offered = [
        v
        for name, on in flags.items()
        if on and (v := version_of_flag(name)) is not None and v not in skip and newer(v, current)
    ]
    return max(offered, key=version_key) if offered else None


@dataclass(frozen=True)
class Progress:
    """Where a rollout stands among the devices the coordinator knows."""

    targeted: int  # devices in the release's cohort at its percent
    updated: int  # devices that reported running it healthily
    failed: int  # devices that rolled it back or refused it
    running: int  # devices whose latest enrollment names this version

    @property
    def failure_share(self) -> float:
        return self.failed / self.targeted if self.targeted else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "targeted": self.targeted,
            "updated": self.updated,
            "failed": self.failed,
            "running": self.running,
            "failure_share": round(self.failure_share, 4),
        }


def should_halt(progress: Progress, threshold: float, min_failures: int = 1) -> bool:
    """hawkBit's error threshold: halt once failures pass ``threshold`` of the targeted.

    ``min_failures`` keeps one unlucky device of a tiny cohort from stopping a rollout
    when the operator wants that.
    """
    return progress.failed >= max(1, min_failures) and progress.failure_share > threshold


@dataclass(frozen=True, slots=True)
class UpdateReport(SignedMessage):
    """A device's word on one update attempt, signed with its identity key.

    ``version`` is what the device runs while it reports; ``release`` the version the
    attempt was about. Reports carry no sequence number: the coordinator keeps the
    latest one per device and release (by ``timestamp``), so a replay changes nothing.
    """

    TYPE: ClassVar[str] = "update_report"
    type: str
    device_id: str
    release: str
    version: str
    outcome: str
    detail: str
    timestamp: int
    signature: str

    FIELDS: ClassVar[dict[str, Any]] = {
        "type": constant("update_report"),
        "device_id": device_id_field,
        "release": text(64, VERSION_PATTERN),
        "version": text(64, VERSION_PATTERN),
        "outcome": text(16, "|".join(OUTCOMES)),
        "detail": text(500, min_len=0),
        "timestamp": timestamp_field,
        "signature": signature_field,
    }
