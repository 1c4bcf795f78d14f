"""A script enrolling identity after identity without a token: the coordinator keeps a
bounded number waiting for approval, signs no certificate for any of them, and forgets
them after their TTL; the operator's approval is what gets a device its certificate."""

from __future__ import annotations

import time
from typing import Any

from tests.adversary.conftest import CoordinatorFactory
from tests.support.coordinator import CoordinatorProcess
from tests.support.device import SimDevice


def enroll(c: CoordinatorProcess, d: SimDevice, token: str | None = None) -> tuple[int, Any]:
    return c.request("POST", "/v1/enroll", d.enroll_message(token))


def pending(c: CoordinatorProcess) -> list[str]:
    status, body = c.request("GET", "/v1/devices", token=c.token("operator"))
    assert status == 200, body
    return [d["device_id"] for d in body["devices"] if d["state"] == "pending"]


def certificates(c: CoordinatorProcess, device_id: str) -> list[Any]:
    status, body = c.request("GET", f"/v1/devices/{device_id}/export", token=c.token("operator"))
    assert status == 200, body
    return list(body["certificates"])


def test_token_less_enrollments_are_capped_and_get_no_certificate(
    make_coordinator: CoordinatorFactory,
) -> None:
    c = make_coordinator({"enrollment": {"max_pending": 20, "max_pending_per_address": 100}})
    admitted = [SimDevice(c.url, port=1000 + i) for i in range(20)]
    for d in admitted:
        status, body = enroll(c, d)
        assert status == 202 and body["state"] == "pending", body
        assert "certificate" not in body
    refused = [SimDevice(c.url, port=2000 + i) for i in range(5)]
    for d in refused:
        status, body = enroll(c, d)
        assert (status, body.get("error", {}).get("code")) == (429, "too_many_pending"), body
    assert sorted(pending(c)) == sorted(d.device_id for d in admitted)
    for d in refused:
        assert c.request("GET", f"/v1/devices/{d.device_id}", token=c.token("operator"))[0] == 404
    # Enrolling again as an identity already waiting is not one more.
    status, body = enroll(c, admitted[0])
    assert status == 202 and body["state"] == "pending" and "certificate" not in body
    # Nothing the CA signed is held by any of them, so device routes refuse them.
    for d in admitted:
        assert certificates(c, d.device_id) == [] and d.cert_file is None
    status, body = c.request("POST", "/v1/heartbeats", admitted[1].poa())
    assert (status, body.get("error", {}).get("code")) == (403, "pending")


def test_one_address_cannot_fill_the_pending_list(make_coordinator: CoordinatorFactory) -> None:
    c = make_coordinator({"enrollment": {"max_pending": 100, "max_pending_per_address": 5}})
    for i in range(5):
        assert enroll(c, SimDevice(c.url, port=1000 + i))[0] == 202
    extra = SimDevice(c.url, port=1999)
    status, body = enroll(c, extra)
    assert (status, body.get("error", {}).get("code")) == (429, "too_many_pending"), body
    assert "127.0.0.1" in body["error"]["message"]
    assert len(pending(c)) == 5
    # A token still admits a device from that address.
    operator = c.token("operator")
    token = c.request("POST", "/v1/tokens", {"uses": 1}, token=operator)[1]["token"]
    status, body = enroll(c, extra, token)
    assert status == 202 and body["state"] == "active" and "certificate" in body


def test_pending_identities_expire_and_approval_brings_the_certificate(
    make_coordinator: CoordinatorFactory,
) -> None:
    c = make_coordinator({"enrollment": {"pending_ttl_s": 2, "max_pending": 3}})
    waiting = [SimDevice(c.url, port=1000 + i) for i in range(3)]
    for d in waiting:
        assert enroll(c, d)[0] == 202
    assert enroll(c, SimDevice(c.url, port=1999))[0] == 429  # full
    # The maintenance sweep forgets them once their TTL has passed.
    deadline = time.monotonic() + 20
    while pending(c) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert pending(c) == []
    status, body = c.request(
        "POST", f"/v1/devices/{waiting[0].device_id}/approve", token=c.token("operator")
    )
    assert (status, body.get("error", {}).get("code")) == (404, "not_found")
    # The room is free again; an identity approved in time gets its certificate at its
    # next enrollment and can then heartbeat with it.
    d = SimDevice(c.url, port=3000)
    status, body = enroll(c, d)
    assert status == 202 and body["state"] == "pending" and "certificate" not in body
    status, _ = c.request("POST", f"/v1/devices/{d.device_id}/approve", token=c.token("operator"))
    assert status == 200
    status, body = enroll(c, d)
    assert status == 202 and body["state"] == "active" and "certificate" in body
    assert len(certificates(c, d.device_id)) == 1
    status, body = c.request("POST", "/v1/heartbeats", d.poa())
    assert status == 202 and body["state"] == "active", body
    time.sleep(2.5)  # past the TTL: an approved device is never swept
    status, body = c.request("GET", f"/v1/devices/{d.device_id}", token=c.token("operator"))
    assert status == 200 and body["state"] == "active"
