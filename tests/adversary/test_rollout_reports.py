"""Who may move a rollout: only approved devices of its cohort, over their own certificate.

A real coordinator with its TUF repository publishes a real release (wheels built from the
source tree) to half of the fleet. Hostile senders then post well-signed ``rolled_back``
reports: a fresh key that enrolled without a token and without a certificate, an approved
device outside the cohort, and a cohort device's report sent over another device's
certificate. None of them is stored or counted and the rollout keeps rolling. Only a cohort
device over its own certificate counts, and halts the rollout as before; a resume counts
the failures reported after it, and a quarantined device's report stops counting.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from typing import Any

import pytest

from aeamc.shared.identity import SigningKey
from aeamc.shared.messages import sign
from aeamc.shared.releases import UpdateReport
from tests.support.coordinator import CoordinatorProcess
from tests.support.device import SimDevice, now_ms
from tests.updates.releases import build_release, release_coordinator

pytestmark = pytest.mark.timeout(180)

RELEASE = "0.2.0"
FLAG = f"release-{RELEASE}"
PERCENT = 50


def bucket(flag: str, device_id: str) -> int:
    """SPEC §10, written out here so the test does not trust the code it checks."""
    digest = hashlib.sha256((flag + ":" + device_id).encode("utf-8")).digest()
    return int.from_bytes(digest[0:8], "big") % 100


def device(coord: CoordinatorProcess, *, in_cohort: bool) -> SimDevice:
    while True:
        d = SimDevice(coord.url, key=SigningKey.from_seed(os.urandom(32)), port=1)
        if (bucket(FLAG, d.device_id) < PERCENT) == in_cohort:
            return d


def report(d: SimDevice, outcome: str = "rolled_back") -> dict[str, Any]:
    body = {
        "type": "update_report",
        "device_id": d.device_id,
        "release": RELEASE,
        "version": "0.1.0",
        "outcome": outcome,
        "detail": "",
        "timestamp": now_ms(),
    }
    return sign(UpdateReport, body, d.key).to_dict()


class Fleet:
    def __init__(self, coord: CoordinatorProcess) -> None:
        self.coord = coord
        self.operator = coord.token("operator")
        _, body = coord.request(
            "POST", "/v1/tokens", {"role": "enroll", "uses": 50}, token=self.operator
        )
        self.enroll_token = body["token"]

    def active(self, *, in_cohort: bool) -> SimDevice:
        d = device(self.coord, in_cohort=in_cohort)
        status, body = self.coord.request("POST", "/v1/enroll", d.enroll_message(self.enroll_token))
        assert status == 202 and d.cert_file is not None, body
        if body["state"] != "active":
            self.op("POST", f"/v1/devices/{d.device_id}/approve")
        assert self.op("GET", f"/v1/devices/{d.device_id}")["state"] == "active"
        return d

    def op(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = self.coord.request(method, path, body, token=self.operator)
        assert status < 300, answer
        return answer

    def rollout(self) -> dict[str, Any]:
        return self.op("GET", f"/v1/releases/{RELEASE}")  # type: ignore[no-any-return]

    def post(self, body: dict[str, Any], via: SimDevice | None) -> tuple[int, Any]:
        return self.coord.request("POST", "/v1/updates/reports", body, device=via)


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    root = tmp_path_factory.mktemp("rollout-reports")
    wheels = build_release(root / "build", RELEASE)
    coord, keys = release_coordinator(root)
    try:
        coord.cli(
            "release", "publish", *map(str, wheels), "--rollout", str(PERCENT), "--keys", str(keys)
        )
        yield coord
    finally:
        coord.stop()


@pytest.fixture
def rollout_fleet(published: CoordinatorProcess) -> Iterator[Fleet]:
    """Three approved cohort devices and one outside; the rollout rolling, nothing reported."""
    f = Fleet(published)
    f.op("PUT", f"/v1/releases/{RELEASE}/rollout", {"percent": PERCENT})
    f.members = [f.active(in_cohort=True) for _ in range(3)]  # type: ignore[attr-defined]
    f.outsider = f.active(in_cohort=False)  # type: ignore[attr-defined]
    yield f
    # Each test's devices leave with their reports, so the next test starts clean.
    for d in [*f.members, f.outsider]:  # type: ignore[attr-defined]
        f.op("DELETE", f"/v1/devices/{d.device_id}")


def _unchanged(f: Fleet, before: dict[str, Any]) -> None:
    after = f.rollout()
    assert after["state"] == "rolling", after
    assert after["progress"] == before["progress"], (before, after)
    assert after["reports"] == before["reports"] == [], after


def test_a_pending_identity_cannot_halt(rollout_fleet: Fleet) -> None:
    before = rollout_fleet.rollout()
    # A fresh key enrolled without a token, without a certificate request and with one:
    # either way it holds no certificate while it waits for approval.
    for csr in ("own", None):
        stranger = device(rollout_fleet.coord, in_cohort=True)
        message = stranger.enroll_message(csr=None) if csr is None else stranger.enroll_message()
        status, body = rollout_fleet.coord.request("POST", "/v1/enroll", message)
        assert status == 202 and body["state"] == "pending", body
        assert stranger.cert_file is None and "certificate" not in body
        status, body = rollout_fleet.post(report(stranger), stranger)
        assert (status, (body.get("error") or {}).get("code")) == (403, "pending"), body
        _unchanged(rollout_fleet, before)
        rollout_fleet.op("DELETE", f"/v1/devices/{stranger.device_id}")


def test_an_approved_device_outside_the_cohort_is_not_counted(rollout_fleet: Fleet) -> None:
    before = rollout_fleet.rollout()
    outsider = rollout_fleet.outsider  # type: ignore[attr-defined]
    status, body = rollout_fleet.post(report(outsider), outsider)
    assert (status, (body.get("error") or {}).get("code")) == (403, "not_in_cohort"), body
    _unchanged(rollout_fleet, before)


def test_a_report_over_another_devices_certificate_is_refused(rollout_fleet: Fleet) -> None:
    before = rollout_fleet.rollout()
    member, other = rollout_fleet.members[0], rollout_fleet.members[1]  # type: ignore[attr-defined]
    status, body = rollout_fleet.post(report(member), other)
    assert (status, (body.get("error") or {}).get("code")) == (403, "certificate_mismatch"), body
    status, body = rollout_fleet.post(report(member), None)
    assert (status, (body.get("error") or {}).get("code")) == (401, "certificate_required"), body
    _unchanged(rollout_fleet, before)


def test_a_cohort_device_over_its_own_certificate_counts_and_halts(rollout_fleet: Fleet) -> None:
    members = rollout_fleet.members  # type: ignore[attr-defined]
    status, body = rollout_fleet.post(report(members[1], "updated"), members[1])
    assert (status, body["recorded"]) == (202, True), body
    assert rollout_fleet.rollout()["state"] == "rolling"
    status, body = rollout_fleet.post(report(members[0]), members[0])
    assert (status, body["recorded"]) == (202, True), body
    after = rollout_fleet.rollout()
    assert after["state"] == "halted", after
    assert after["halt_reason"].startswith("1 of 3 targeted devices failed"), after
    p = after["progress"]
    assert (p["targeted"], p["updated"], p["failed"]) == (3, 1, 1), p


def test_a_resume_counts_only_failures_reported_after_it(rollout_fleet: Fleet) -> None:
    members = rollout_fleet.members  # type: ignore[attr-defined]
    assert rollout_fleet.post(report(members[0]), members[0])[0] == 202
    assert rollout_fleet.rollout()["state"] == "halted"
    rollout_fleet.op("PUT", f"/v1/releases/{RELEASE}/rollout", {"percent": PERCENT})
    # A healthy report after the deliberate resume does not re-halt on the old failure.
    assert rollout_fleet.post(report(members[1], "updated"), members[1])[0] == 202
    after = rollout_fleet.rollout()
    assert after["state"] == "rolling", after
    assert after["progress"]["failed"] == 1, after
    # A new failure after the resume halts again.
    assert rollout_fleet.post(report(members[2]), members[2])[0] == 202
    assert rollout_fleet.rollout()["state"] == "halted"


def test_a_quarantined_devices_report_stops_counting(rollout_fleet: Fleet) -> None:
    members = rollout_fleet.members  # type: ignore[attr-defined]
    rollout_fleet.op("POST", f"/v1/releases/{RELEASE}/halt", {"reason": "held while checking"})
    assert rollout_fleet.post(report(members[0]), members[0])[0] == 202
    assert rollout_fleet.rollout()["progress"]["failed"] == 1
    rollout_fleet.op("POST", f"/v1/devices/{members[0].device_id}/quarantine")
    p = rollout_fleet.rollout()["progress"]
    assert (p["targeted"], p["failed"]) == (2, 0), p
