"""Backpressure: past ``server.max_inflight`` device requests, a 503 with ``Retry-After``
before the body is read, nothing stored of it, and the shed counted in ``/metrics``.

Requests are held in flight without any timing: a raw TLS connection sends a request
head that announces a body and then sends nothing, so its handler waits for the body
(in flight) until the connection is closed."""

from __future__ import annotations

import concurrent.futures
import os
import re
import signal
import socket
import sqlite3
import ssl
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest

from tests.support.coordinator import CoordinatorProcess, running_coordinator
from tests.support.device import SimDevice

MAX_INFLIGHT = 2
RETRY_AFTER_S = 7


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CoordinatorProcess]:
    settings = {"server": {"max_inflight": MAX_INFLIGHT, "overload_retry_after_s": RETRY_AFTER_S}}
    with running_coordinator(Path(tmp_path_factory.mktemp("overload")), settings) as coord:
        yield coord


@pytest.fixture(scope="module")
def devices(coordinator: CoordinatorProcess) -> list[SimDevice]:
    token = coordinator.issue_token("enroll", uses=3)
    out = []
    for _ in range(3):
        device = SimDevice(coordinator.url, port=1)
        status, answer = coordinator.request("POST", "/v1/enroll", device.enroll_message(token))
        assert status == 202 and answer["state"] == "active", answer
        out.append(device)
    return out


def metric(coordinator: CoordinatorProcess, name: str, route: str = "", **labels: str) -> float:
    status, text = coordinator.request("GET", "/metrics", device=None)
    assert status == 200
    if route:
        labels["route"] = route
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    labels_text = f"{{{inner}}}" if inner else ""
    found = re.search(rf"^{re.escape(name + labels_text)} (\S+)$", text.decode(), re.M)
    assert found is not None, f"{name}{labels_text} is not in /metrics"
    return float(found.group(1))


def inflight(coordinator: CoordinatorProcess) -> float:
    return metric(coordinator, "aeamc_coordinator_http_requests_inflight")


def shed(coordinator: CoordinatorProcess, route: str) -> float:
    return metric(coordinator, "aeamc_coordinator_http_requests_shed_total", route)


@contextmanager
def held(coordinator: CoordinatorProcess, n: int, path: str) -> Iterator[None]:
    """``n`` requests to ``path`` in flight (their bodies never sent) while the block runs."""
    ctx = coordinator.ssl_context(None)
    with ExitStack() as stack:
        for _ in range(n):
            raw = socket.create_connection(("127.0.0.1", coordinator.port), timeout=30)
            conn = stack.enter_context(ctx.wrap_socket(raw, server_hostname="coordinator.aeamc"))
            head = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
            )
            conn.sendall(head.encode())
        coordinator.wait_for(lambda: inflight(coordinator) >= n)
        assert inflight(coordinator) == n
        yield
    # Closed: each held handler ends (its body never comes), and leaves the count.
    coordinator.wait_for(lambda: inflight(coordinator) == 0)


def raw_head(coordinator: CoordinatorProcess, path: str, length: int) -> tuple[int, dict[str, str]]:
    """Send only the head of a POST announcing ``length`` body bytes; the status line and
    the head of the answer (which must come without the body ever being sent)."""
    ctx: ssl.SSLContext = coordinator.ssl_context(None)
    with (
        socket.create_connection(("127.0.0.1", coordinator.port), timeout=30) as raw,
        ctx.wrap_socket(raw, server_hostname="coordinator.aeamc") as conn,
    ):
        conn.sendall(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {length}\r\n\r\n".encode()
        )
        answer = b""
        while b"\r\n\r\n" not in answer:
            chunk = conn.recv(65536)
            assert chunk, "closed without an answer"
            answer += chunk
    status_line, *lines = answer.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}
    return int(status_line.split()[1]), headers


def test_below_capacity_nothing_is_shed(
    coordinator: CoordinatorProcess, devices: list[SimDevice]
) -> None:
    for _ in range(3):
        for device in devices:
            status, answer = coordinator.request("POST", "/v1/heartbeats", device.poa())
            assert status == 202, answer
    # As many held as the bound allows: the next one still gets in.
    with held(coordinator, MAX_INFLIGHT - 1, "/v1/heartbeats"):
        status, answer = coordinator.request("POST", "/v1/heartbeats", devices[0].poa())
        assert status == 202, answer
    for route in ("/v1/heartbeats", "/v1/proofs", "/v1/proofs/batch"):
        assert shed(coordinator, route) == 0


def test_past_capacity_a_heartbeat_is_shed_and_nothing_of_it_stored(
    coordinator: CoordinatorProcess, devices: list[SimDevice]
) -> None:
    device = devices[1]
    poa = device.poa()
    before = shed(coordinator, "/v1/heartbeats")
    rejected = metric(coordinator, "aeamc_coordinator_proofs_total", result="rejected")
    with held(coordinator, MAX_INFLIGHT, "/v1/heartbeats"):
        status, answer = coordinator.request("POST", "/v1/heartbeats", poa)
        assert status == 503, answer
        assert answer == {
            "error": {
                "code": "overloaded",
                "message": answer["error"]["message"],
                "retry_after_s": RETRY_AFTER_S,
            }
        }
        # Decided before the body is read: the answer comes to a head alone.
        status, headers = raw_head(coordinator, "/v1/heartbeats", 60_000)
        assert status == 503
        assert headers["retry-after"] == str(RETRY_AFTER_S)
        assert headers["x-request-id"]
        # Every device route is bounded, not heartbeats alone.
        for route in ("/v1/proofs", "/v1/proofs/batch"):
            assert raw_head(coordinator, route, 100)[0] == 503
            assert shed(coordinator, route) >= 1
        # Other routes are not.
        status, _ = coordinator.request("GET", "/v1/health", device=None)
        assert status == 200
    assert shed(coordinator, "/v1/heartbeats") == before + 2
    # A proof shed was never judged: it is not counted as a rejected proof.
    assert metric(coordinator, "aeamc_coordinator_proofs_total", result="rejected") == rejected
    # Nothing of the shed heartbeat was kept: the same message (its seq unused) is taken.
    status, answer = coordinator.request("POST", "/v1/heartbeats", poa)
    assert status == 202, answer
    status, answer = coordinator.request("POST", "/v1/heartbeats", poa)
    assert status == 409 and answer["error"]["code"] == "replay", answer


def test_shed_requests_are_in_the_request_metrics_with_their_status(
    coordinator: CoordinatorProcess,
) -> None:
    name = "aeamc_coordinator_http_requests_total"
    status, text = coordinator.request("GET", "/metrics", device=None)
    assert status == 200
    line = f'{name}{{method="POST",route="/v1/heartbeats",status="503"}}'
    assert line in text.decode()


STALL_S = 3.0


def test_a_coordinator_behind_its_loop_sheds_until_it_catches_up(tmp_path: Path) -> None:
    """A process whose event loop runs late (here: stopped for 3 s, as a loop stuck behind a
    backlog in its sockets is) sheds heartbeats that arrive meanwhile, though none is in
    flight, and takes them again once it has caught up."""
    settings = {"server": {"max_queue_delay_ms": 20, "overload_retry_after_s": RETRY_AFTER_S}}
    with running_coordinator(tmp_path, settings) as coord:
        token = coord.issue_token("enroll")
        device = SimDevice(coord.url, port=1)
        status, answer = coord.request("POST", "/v1/enroll", device.enroll_message(token))
        assert status == 202, answer
        poa = device.poa()
        assert coord.process is not None
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            os.kill(coord.process.pid, signal.SIGSTOP)
            try:
                # Connected and sent while the process is stopped: it reads the request
                # only after it has woken, and found how late its loop is.
                late = pool.submit(coord.request, "POST", "/v1/heartbeats", poa)
                time.sleep(STALL_S)
            finally:
                os.kill(coord.process.pid, signal.SIGCONT)
            status, answer = late.result(timeout=60)
        assert status == 503 and answer["error"]["code"] == "overloaded", answer
        assert answer["error"]["retry_after_s"] == RETRY_AFTER_S
        assert shed(coord, "/v1/heartbeats") == 1
        assert inflight(coord) == 0
        # Caught up, the loop is on time again and the same heartbeat (its seq unused) is
        # taken.
        coord.wait_for(lambda: metric(coord, "aeamc_coordinator_queue_delay_seconds") < 0.02, 30)
        status, answer = coord.request("POST", "/v1/heartbeats", poa)
        assert status == 202, answer


HOLD_S = 1.5
#: Heartbeats that wait for the database together: enough for the standing delay.
WAITING = 8


def test_heartbeats_that_all_waited_for_the_database_shed_the_next(tmp_path: Path) -> None:
    """Another writer holds the database (as a slow disk or a long write would): the
    heartbeats that arrive meanwhile wait for it, none of them quick, and once they are
    answered the next one is shed — though the event loop was never late — until quick
    answers show the queue is gone."""
    settings = {"server": {"max_queue_delay_ms": 100, "overload_retry_after_s": RETRY_AFTER_S}}
    with running_coordinator(tmp_path, settings) as coord:
        token = coord.issue_token("enroll", uses=WAITING + 1)
        devices = [SimDevice(coord.url, port=1) for _ in range(WAITING + 1)]
        for d in devices:
            status, answer = coord.request("POST", "/v1/enroll", d.enroll_message(token))
            assert status == 202, answer
        held = sqlite3.connect(coord.state_dir / "coordinator.db", isolation_level=None)
        with concurrent.futures.ThreadPoolExecutor(WAITING) as pool:
            held.execute("BEGIN IMMEDIATE")
            try:
                waiting = [
                    pool.submit(coord.request, "POST", "/v1/heartbeats", d.poa())
                    for d in devices[:WAITING]
                ]
                coord.wait_for(lambda: inflight(coord) == WAITING)
                time.sleep(HOLD_S)
            finally:
                held.execute("ROLLBACK")
                held.close()
            assert [f.result(timeout=60)[0] for f in waiting] == [202] * WAITING
        # Their interval is over: its quickest heartbeat took over a second. (Asked at once:
        # the figure counts for a second after its interval.)
        time.sleep(0.15)
        status, answer = coord.request("POST", "/v1/heartbeats", devices[WAITING].poa())
        assert status == 503 and answer["error"]["code"] == "overloaded", answer
        assert shed(coord, "/v1/heartbeats") == 1
        # The figure stops counting a second after; then the same heartbeat is taken.
        coord.wait_for(lambda: metric(coord, "aeamc_coordinator_queue_delay_seconds") < 0.1, 30)
        status, answer = coord.request("POST", "/v1/heartbeats", devices[WAITING].poa())
        assert status == 202, answer
