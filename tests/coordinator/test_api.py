"""The coordinator's API refuses bad input with the right status and code, and changes
nothing when it does."""

from __future__ import annotations

import json
import re
import time
from typing import Any

import pytest

from aeamc.shared.identity import SigningKey
from aeamc.shared.messages import PoA, sign
from tests.support.coordinator import CoordinatorProcess
from tests.support.device import GOOD_TELEMETRY, SimDevice, now_ms


def post(c: CoordinatorProcess, path: str, body: Any, **kw: Any) -> tuple[int, Any]:
    return c.request("POST", path, body, **kw)


def error_code(reply: tuple[int, Any]) -> tuple[int, str]:
    status, body = reply
    return status, body["error"]["code"]


def test_enrollment_with_approval(coordinator: CoordinatorProcess) -> None:
    d = SimDevice(coordinator.url, port=1)
    status, body = post(coordinator, "/v1/enroll", d.enroll_message())
    assert status == 202 and body["state"] == "pending"
    assert body["coordinator_public_key"] and body["coordinator_id"]
    assert "certificate" not in body  # issued only once approved
    assert error_code(post(coordinator, "/v1/heartbeats", d.poa())) == (403, "pending")
    # Enrolling again is idempotent while pending.
    assert post(coordinator, "/v1/enroll", d.enroll_message())[1]["state"] == "pending"
    listed = coordinator.cli("devices", "list").stdout
    assert d.device_id in listed and "pending" in listed
    coordinator.cli("devices", "approve", d.device_id)
    # The device's next enrollment (an agent re-sends it while pending) gets its certificate.
    status, body = post(coordinator, "/v1/enroll", d.enroll_message())
    assert status == 202 and body["state"] == "active" and "certificate" in body
    status, body = post(coordinator, "/v1/heartbeats", d.poa())
    assert status == 202 and body["state"] == "active"
    shown = json.loads(coordinator.cli("devices", "show", d.device_id).stdout)
    assert shown["state"] == "active" and shown["last_seq"] == 2
    assert shown["telemetry"]["battery_pct"] == 90
    assert shown["eps"] == pytest.approx(0.4 * 0.9 + 0.2 + 0.2 * 0.5 + 0.2 * 0.996)


def test_enrollment_tokens(coordinator: CoordinatorProcess) -> None:
    operator = coordinator.token("operator")
    status, body = post(coordinator, "/v1/tokens", {"role": "enroll", "uses": 1}, token=operator)
    assert status == 201
    token = body["token"]
    first, second = SimDevice(coordinator.url, port=1), SimDevice(coordinator.url, port=2)
    assert post(coordinator, "/v1/enroll", first.enroll_message(token))[1]["state"] == "active"
    assert error_code(post(coordinator, "/v1/enroll", second.enroll_message(token))) == (
        403,
        "invalid_token",
    )
    assert error_code(post(coordinator, "/v1/enroll", second.enroll_message("nope"))) == (
        403,
        "invalid_token",
    )
    # A refused enrollment stored nothing.
    status, _ = coordinator.request("GET", f"/v1/devices/{second.device_id}", token=operator)
    assert status == 404
    expiring = post(coordinator, "/v1/tokens", {"role": "enroll", "ttl_s": 1}, token=operator)
    time.sleep(1.1)
    assert error_code(
        post(coordinator, "/v1/enroll", second.enroll_message(expiring[1]["token"]))
    ) == (403, "invalid_token")
    # Only operators create tokens; clients cannot.
    assert error_code(
        post(coordinator, "/v1/tokens", {"role": "enroll"}, token=coordinator.token("client"))
    ) == (403, "forbidden")
    assert error_code(post(coordinator, "/v1/tokens", {"role": "enroll"})) == (401, "unauthorized")


def test_heartbeat_refusals(coordinator: CoordinatorProcess, enroll_token: str) -> None:
    d = SimDevice(coordinator.url, port=1)
    assert error_code(post(coordinator, "/v1/heartbeats", d.poa())) == (403, "not_enrolled")
    post(coordinator, "/v1/enroll", d.enroll_message(enroll_token))
    good = d.poa()
    assert post(coordinator, "/v1/heartbeats", good)[0] == 202
    # Replay of the very same message, and an older seq.
    assert error_code(post(coordinator, "/v1/heartbeats", good)) == (409, "replay")
    stale_seq = sign(
        PoA, {**{k: v for k, v in good.items() if k != "signature"}, "timestamp": now_ms()}, d.key
    ).to_dict()
    assert error_code(post(coordinator, "/v1/heartbeats", stale_seq)) == (409, "replay")
    # Outside the freshness window, in the past and in the future.
    assert error_code(post(coordinator, "/v1/heartbeats", d.poa(timestamp=now_ms() - 61_000))) == (
        400,
        "stale_message",
    )
    assert error_code(post(coordinator, "/v1/heartbeats", d.poa(timestamp=now_ms() + 61_000))) == (
        400,
        "stale_message",
    )
    # Forged: signed by another key.
    forged = sign(
        PoA, {k: v for k, v in d.poa().items() if k != "signature"}, SigningKey.from_seed(bytes(32))
    ).to_dict()
    assert error_code(post(coordinator, "/v1/heartbeats", forged)) == (401, "bad_signature")
    # Tampered after signing.
    tampered = d.poa()
    tampered["telemetry"] = {**GOOD_TELEMETRY, "battery_pct": 100}
    assert error_code(post(coordinator, "/v1/heartbeats", tampered)) == (401, "bad_signature")
    # Cross-type: a signed enroll message posted as a heartbeat.
    assert error_code(post(coordinator, "/v1/heartbeats", d.enroll_message())) == (
        400,
        "wrong_type",
    )
    # The seq accepted is still the first one: nothing above changed state.
    shown = json.loads(coordinator.cli("devices", "show", d.device_id).stdout)
    assert shown["last_seq"] == good["seq"]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{", 400, "invalid_json"),
        (b"[]", 400, "invalid_message"),
        (b'{"type":"poa","type":"poa"}', 400, "invalid_json"),
        (b'{"seq": NaN}', 400, "invalid_json"),
        (b"\xff\xfe", 400, "invalid_json"),
    ],
)
def test_malformed_bodies(
    coordinator: CoordinatorProcess, body: bytes, status: int, code: str
) -> None:
    assert error_code(coordinator.request("POST", "/v1/heartbeats", raw_body=body)) == (
        status,
        code,
    )


def test_content_type_size_and_routing_errors(coordinator: CoordinatorProcess) -> None:
    assert error_code(
        coordinator.request("POST", "/v1/heartbeats", raw_body=b"{}", content_type="text/plain")
    ) == (415, "unsupported_media_type")
    big = b'{"a":"' + b"x" * (17 * 1024 * 1024) + b'"}'
    assert error_code(coordinator.request("POST", "/v1/heartbeats", raw_body=big)) == (
        413,
        "body_too_large",
    )
    assert error_code(coordinator.request("GET", "/v1/nothing")) == (404, "not_found")
    assert error_code(coordinator.request("DELETE", "/v1/heartbeats")) == (
        405,
        "method_not_allowed",
    )
    assert error_code(coordinator.request("GET", "/v1/microblocks/x")) == (400, "invalid_message")
    assert error_code(coordinator.request("GET", "/v1/microblocks/0/raw")) == (404, "not_found")
    assert error_code(
        coordinator.request("GET", "/v1/devices/XYZ", token=coordinator.token("operator"))
    ) == (400, "invalid_message")


def test_task_submission_validation(coordinator: CoordinatorProcess) -> None:
    client = coordinator.token("client")
    cases = [
        ({"kind": "nope", "params": {}, "chunks": 1}, "unknown_kind"),
        ({"kind": "sha256-chain", "params": {"seed": "00"}, "chunks": 1}, "bad_params"),
        ({"kind": "sha256-chain", "params": {}, "chunks": 0}, "invalid_message"),
        ({"kind": "sha256-chain", "chunks": 1}, "missing_field"),
        ({"kind": "sha256-chain", "params": {}, "chunks": 1, "x": 1}, "unknown_field"),
        (  # a chosen id leaves room for the owner prefix: <8 hex>.<chosen> is at most 64
            {
                "kind": "sha256-chain",
                "params": {"seed": "00" * 32, "iterations": 1},
                "chunks": 1,
                "task_id": "a" * 56,
            },
            "invalid_message",
        ),
        (
            {
                "kind": "sha256-chain",
                "params": {"seed": "00" * 32, "iterations": 1},
                "chunks": 1,
                "replicas": 9,
            },
            "invalid_message",
        ),
    ]
    for body, code in cases:
        status, reply = post(coordinator, "/v1/tasks", body, token=client)
        assert (status, reply["error"]["code"]) == (400, code), reply
    assert post(coordinator, "/v1/tasks", cases[0][0])[0] == 401
    good = {
        "kind": "sha256-chain",
        "params": {"seed": "00" * 32, "iterations": 1},
        "chunks": 1,
        "task_id": "client-chosen-1",
    }
    # A chosen id is the client's own reference: the task id is scoped to its token.
    accepted = post(coordinator, "/v1/tasks", good, token=client)[1]
    assert accepted["client_ref"] == "client-chosen-1"
    assert re.fullmatch(r"[0-9a-f]{8}\.client-chosen-1", accepted["task_id"]), accepted
    assert error_code(post(coordinator, "/v1/tasks", good, token=client)) == (409, "duplicate")
    listed = coordinator.request("GET", "/v1/tasks", token=client)[1]["tasks"]
    assert [t["task_id"] for t in listed] == [accepted["task_id"]]
    assert coordinator.request("GET", "/v1/tasks/none", token=client)[0] == 404


def test_proof_refusals(coordinator: CoordinatorProcess, enroll_token: str) -> None:
    from aeamc.shared.messages import Assignment

    d = SimDevice(coordinator.url, port=1)
    post(coordinator, "/v1/enroll", d.enroll_message(enroll_token))
    fake = sign(
        Assignment,
        {
            "type": "assignment",
            "task_id": "t-x",
            "device_id": d.device_id,
            "coordinator_id": d.device_id,
            "kind": "sha256-chain",
            "params": {"seed": "00" * 32, "iterations": 1},
            "chunks": 1,
            "issued_at": now_ms(),
            "expires_at": now_ms() + 1000,
        },
        d.key,
    )
    assert error_code(post(coordinator, "/v1/proofs", d.proof_for(fake))) == (
        410,
        "unknown_assignment",
    )
    assert error_code(post(coordinator, "/v1/proofs", {"pot": {}, "output": "zz"})) == (
        400,
        "invalid_message",
    )
    stranger = SimDevice(coordinator.url, port=2)
    assert error_code(post(coordinator, "/v1/proofs", stranger.proof_for(fake))) == (
        403,
        "not_enrolled",
    )


def test_openapi_matches_routes(coordinator: CoordinatorProcess) -> None:
    from aeamc.coordinator.api import build_app
    from aeamc.coordinator.config import LimitsConfig
    from aeamc.coordinator.openapi import openapi_document

    status, doc = coordinator.request("GET", "/v1/openapi.json")
    assert status == 200 and doc == json.loads(json.dumps(openapi_document()))
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}

    class _Stub:
        class config:  # mimics the attribute path build_app reads
            class server:
                max_body_bytes = 1024
                max_inflight = 0
                overload_retry_after_s = 5
                max_queue_delay_ms = 0

            limits = LimitsConfig()

    app = build_app(_Stub())  # type: ignore[arg-type]
    served = {
        (r.method, r.resource.canonical)  # type: ignore[union-attr]
        for r in app.router.routes()
        if r.method != "HEAD"
    }
    assert documented == served


def test_health_and_status(coordinator: CoordinatorProcess) -> None:
    status, body = coordinator.request("GET", "/v1/health")
    assert status == 200 and body["status"] == "ok"
    out = json.loads(coordinator.cli("status", "--json").stdout)
    assert out["blocks"] == 0 and out["coordinator_id"] == body["coordinator_id"]
    text = coordinator.cli("status").stdout
    assert "coordinator " + body["coordinator_id"] in text


def test_metrics_follow_prometheus_conventions(
    coordinator: CoordinatorProcess, enroll_token: str
) -> None:
    d = SimDevice(coordinator.url, port=1)
    post(coordinator, "/v1/enroll", d.enroll_message(enroll_token))
    post(coordinator, "/v1/heartbeats", d.poa())
    post(coordinator, "/v1/proofs", {"pot": {}, "output": ""})
    status, text = coordinator.request("GET", "/metrics")
    assert status == 200
    lines = text.decode().splitlines()
    samples = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in lines
        if line and not line.startswith("#")
    }
    assert samples['aeamc_coordinator_devices{state="active"}'] == 1
    assert samples["aeamc_coordinator_heartbeats_total"] == 1
    assert samples['aeamc_coordinator_proofs_total{result="rejected"}'] == 1
    assert 'aeamc_coordinator_build_info{version="0.1.0"}' in samples
    assert any(
        k.startswith('aeamc_coordinator_http_requests_total{method="POST",route="/v1/heartbeats"')
        for k in samples
    )
    assert any(
        k.startswith("aeamc_coordinator_http_request_duration_seconds_bucket") for k in samples
    )
    # Never a per-device label, whatever the fleet size.
    assert d.device_id not in text.decode()
    # The coordinator's own metrics, and the standard process and platform ones.
    assert all(name.startswith(("aeamc_coordinator_", "process_", "python_")) for name in samples)
    assert samples["process_resident_memory_bytes"] > 0 and samples["process_open_fds"] > 0
    assert "process_cpu_seconds_total" in samples
    assert samples["aeamc_coordinator_database_size_bytes"] > 0
