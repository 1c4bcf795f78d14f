"""Hostile or careless token holders: a token's use limit and expiry hold for every role,
also under concurrent requests, and an enrollment token is always limited."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.adversary.conftest import CoordinatorFactory
from tests.support.coordinator import CoordinatorProcess
from tests.support.device import SimDevice


def make_token(c: CoordinatorProcess, body: dict[str, Any]) -> dict[str, Any]:
    status, reply = c.request("POST", "/v1/tokens", body, token=c.token("operator"))
    assert status == 201, reply
    return reply


def test_a_client_token_works_only_its_uses(make_coordinator: CoordinatorFactory) -> None:
    c = make_coordinator()
    token = make_token(c, {"role": "client", "uses": 2})["token"]
    assert c.request("GET", "/v1/tasks", token=token)[0] == 200
    assert c.request("GET", "/v1/tasks", token=token)[0] == 200
    status, body = c.request("GET", "/v1/tasks", token=token)
    assert (status, body.get("error", {}).get("code")) == (401, "unauthorized"), body


def test_an_expired_operator_token_is_refused(make_coordinator: CoordinatorFactory) -> None:
    c = make_coordinator()
    token = make_token(c, {"role": "operator", "ttl_s": 1})["token"]
    assert c.request("GET", "/v1/devices", token=token)[0] == 200
    time.sleep(1.5)
    status, body = c.request("GET", "/v1/devices", token=token)
    assert (status, body.get("error", {}).get("code")) == (401, "unauthorized"), body


def test_a_default_enrollment_token_is_limited_and_expiring(
    make_coordinator: CoordinatorFactory,
) -> None:
    c = make_coordinator({"tokens": {"enroll_default_uses": 3, "enroll_default_ttl_s": 600}})
    before = time.time() * 1000
    made = make_token(c, {})
    assert made["role"] == "enroll" and made["uses"] == 3 and made["ttl_s"] == 600
    assert before + 599_000 <= made["expires_at"] <= time.time() * 1000 + 600_000
    for i in range(3):
        status, body = c.request(
            "POST", "/v1/enroll", SimDevice(c.url, port=1000 + i).enroll_message(made["token"])
        )
        assert status == 202 and body["state"] == "active", body
    late = SimDevice(c.url, port=1999)
    status, body = c.request("POST", "/v1/enroll", late.enroll_message(made["token"]))
    assert (status, body.get("error", {}).get("code")) == (403, "invalid_token"), body
    assert c.request("GET", f"/v1/devices/{late.device_id}", token=c.token("operator"))[0] == 404


def test_concurrent_requests_spend_a_one_use_token_once(
    make_coordinator: CoordinatorFactory,
) -> None:
    c = make_coordinator()
    for _ in range(3):
        token = make_token(c, {"role": "client", "uses": 1})["token"]
        with ThreadPoolExecutor(8) as pool:
            statuses = list(
                pool.map(lambda t: c.request("GET", "/v1/tasks", token=t)[0], [token] * 8)
            )
        assert sorted(statuses) == [200] + [401] * 7, statuses
