"""What a client is told while the coordinator's database is out of reach: ``503`` with
``Retry-After`` and the ``unavailable`` code, which agents and clients retry, instead of
a bare ``500`` that reads as a fault of the coordinator."""

from __future__ import annotations

import json

from aiohttp.test_utils import make_mocked_request

from aeamc.coordinator.front import _error_reply
from aeamc.coordinator.groupcommit import StoreUnavailable
from aeamc.coordinator.pgdb import LeadershipLost


def test_an_unreachable_database_is_answered_503_with_retry_after() -> None:
    for exc in (
        StoreUnavailable("the database is out of reach: connection refused"),
        LeadershipLost("this node's leader lock session has ended"),
    ):
        resp = _error_reply(make_mocked_request("POST", "/v1/heartbeats"), exc)
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        assert resp.body is not None
        body = json.loads(bytes(resp.body))  # type: ignore[arg-type]
        assert body["error"]["code"] == "unavailable"
        assert body["error"]["retry_after_s"] == 1
        # The engine's words stay in the log: nothing of the database's address leaks.
        assert "connection refused" not in body["error"]["message"]


def test_a_fault_of_ours_is_still_a_500() -> None:
    resp = _error_reply(make_mocked_request("GET", "/v1/devices"), KeyError("x"))
    assert resp.status == 500
