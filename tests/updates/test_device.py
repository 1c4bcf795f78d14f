"""One device, two behaviours the fleet test cannot pin down: an update waits for the task
that runs (the update lock), and a release that starts but never becomes healthy is rolled
back once its health deadline passes."""

from __future__ import annotations

import concurrent.futures
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.agent import GOOD_TELEMETRY, AgentProcess
from tests.support.coordinator import CoordinatorProcess
from tests.support.waiting import wait_for

from .releases import (
    BASE,
    NEVER_HEARTBEATS,
    build_release,
    fake_release,
    release_coordinator,
)

GOOD, UNHEALTHY = "0.2.0", "0.3.0"
HOT = {**GOOD_TELEMETRY, "cpu_temp_c": 90}

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def device(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[CoordinatorProcess, AgentProcess, dict[str, list[Path]], Path]]:
    root = tmp_path_factory.mktemp("device")
    with concurrent.futures.ThreadPoolExecutor(2) as builder:
        builds = {
            GOOD: builder.submit(build_release, root / "build", GOOD),
            UNHEALTHY: builder.submit(build_release, root / "build", UNHEALTHY, NEVER_HEARTBEATS),
        }
        # The agent restarts into a release right after it delivered a proof, and that
        # proof's spot-check may come while it is down: on a busy machine the restart
        # takes longer than the fast test settings' retries (0.5 s doubling, 5 attempts),
        # and the check would go unanswered. The default's order of magnitude bridges it.
        coord, keys = release_coordinator(root, {"spot_checks": {"retry_s": 5.0}})
        _, token = coord.request(
            "POST", "/v1/tokens", {"role": "enroll"}, token=coord.token("operator")
        )
        agent = AgentProcess(
            root / "agent",
            coordinator_url=coord.url,
            token=token["token"],
            profile=[{"at_s": 0, **GOOD_TELEMETRY}],
            mdns=False,
            # A good release confirms its health within seconds here (4 s with five busy
            # processes per core); a host shared with other jobs took over 10 s.
            # 30 s keeps a good release from rolling back there, at the price of a slower
            # rollback of the unhealthy one.
            settings={"updates": {"check_interval_s": 0.5, "health_deadline_s": 30.0}},
        )
        try:
            agent.start()
            wheels = {v: f.result() for v, f in builds.items()}
            agent.wait_status(lambda s: s["coordinator"]["state"] == "active")
            yield coord, agent, wheels, keys
        finally:
            agent.close()
            coord.stop()


def _publish(coord: CoordinatorProcess, wheels: list[Path], keys: Path) -> None:
    coord.cli("release", "publish", *map(str, wheels), "--rollout", "100", "--keys", str(keys))


def _updates(status: dict[str, Any]) -> dict[str, Any]:
    return status.get("updates") or {}


def test_a_check_that_finds_nothing_new_starts_no_helper(device) -> None:  # type: ignore[no-untyped-def]
    """After one verified refresh, checks against an unchanged timestamp.json skip the TUF
    helper; a re-signed timestamp is refreshed (verified) again."""
    coord, agent, _wheels, _keys = device
    quiet = _updates(agent.wait_status(lambda s: _updates(s).get("unchanged_checks", 0) >= 3))
    assert quiet["refreshes"] >= 1 and quiet["last_error"] is None
    version = quiet["trusted_metadata"]["timestamp"]
    coord.cli("release", "refresh")
    moved = _updates(
        agent.wait_status(lambda s: _updates(s)["trusted_metadata"]["timestamp"] > version)
    )
    assert moved["refreshes"] > quiet["refreshes"]


def test_an_update_waits_for_the_running_task(device) -> None:  # type: ignore[no-untyped-def]
    coord, agent, wheels, keys = device
    task = {
        "kind": "sha256-chain",
        "params": {"seed": "11" * 32, "iterations": 200_000},
        "chunks": 8,
    }
    status, body = coord.request("POST", "/v1/tasks", task, token=coord.token("client"))
    assert status == 202, body
    task_id = body["task_id"]
    agent.wait_status(lambda s: s["task"] is not None and s["task"]["task_id"] == task_id)
    # Too hot: the task is suspended between chunks — running, not finished.
    agent.set_profile([{"at_s": 0, **HOT}])
    agent.wait_status(lambda s: (s["task"] or {}).get("state") == "suspended")
    _publish(coord, wheels[GOOD], keys)
    waiting = agent.wait_status(lambda s: _updates(s).get("state") == "waiting_for_idle")
    # Installed next to the running agent, which goes on with its task.
    assert waiting["version"] == BASE and _updates(waiting)["installed"] == [GOOD]
    assert waiting["task"]["task_id"] == task_id
    # Checked, downloaded and installed by helper processes: python-tuf verified signatures
    # with cryptography there, and the daemon that goes on running never mapped it.
    assert "/cryptography/" not in Path(f"/proc/{waiting['pid']}/maps").read_text()
    agent.set_profile([{"at_s": 0, **GOOD_TELEMETRY}])
    agent.wait_status(lambda s: s["version"] == GOOD and not _updates(s).get("trial"), 60)

    # The task ran to its end on the old release and its proof was accepted.
    def task_state() -> str:
        return str(
            coord.request("GET", f"/v1/tasks/{task_id}", token=coord.token("client"))[1]["state"]
        )

    wait_for(
        lambda: task_state() == "completed",
        60,
        explain=lambda: (  # what both sides said, for a failure on a busy host
            f"task {task_state()}\ncoordinator:\n{coord.log_text()[-4000:]}\n"
            f"agent:\n{agent.log_text()[-4000:]}"
        ),
    )
    log = agent.log_text()
    finished = log.index(f"task {task_id} done")
    restarted = log.index(f"release {GOOD} installed; restarting into it")
    assert finished < restarted
    assert "interrupted" not in log


def test_a_release_that_never_becomes_healthy_is_rolled_back(device) -> None:  # type: ignore[no-untyped-def]
    coord, agent, wheels, keys = device
    _publish(coord, wheels[UNHEALTHY], keys)
    agent.wait_status(lambda s: s["version"] == UNHEALTHY, 60)
    back = agent.wait_status(
        lambda s: s["version"] == GOOD and UNHEALTHY in _updates(s).get("failed", {}), 60
    )
    reason = _updates(back)["failed"][UNHEALTHY]
    assert "did not confirm its health within 30 s" in reason
    assert _updates(back)["installed"] == [GOOD] and _updates(back)["slot"] == GOOD
    wait_for(
        lambda: (
            coord.request("GET", f"/v1/releases/{UNHEALTHY}", token=coord.token("operator"))[1][
                "state"
            ]
            == "halted"
        ),
        30,
    )
    _, detail = coord.request("GET", f"/v1/releases/{UNHEALTHY}", token=coord.token("operator"))
    [report] = detail["reports"]
    assert (report["outcome"], report["version"]) == ("rolled_back", GOOD)
    assert "did not confirm its health" in report["detail"]
    # Healthy again on the previous release: it heartbeats and is not offered the bad one.
    agent.wait_status(
        lambda s: (
            s["coordinator"]["state"] == "active"
            and s["flags"].get(f"release-{UNHEALTHY}") is False
        )
    )


def test_bad_release_requests_are_refused(device) -> None:  # type: ignore[no-untyped-def]
    from aeamc.shared.identity import SigningKey
    from aeamc.shared.messages import sign
    from aeamc.shared.releases import UpdateReport

    coord, agent, _, _ = device
    operator = coord.token("operator")
    before = coord.request("GET", "/v1/releases", token=operator)[1]
    cases = [
        ("POST", "/v1/releases", {"version": "9.0.0", "percent": 5}, None, 401, "unauthorized"),
        (
            "POST",
            "/v1/releases",
            {"version": "9.0.0", "percent": 5},
            operator,
            409,
            "not_published",
        ),
        ("POST", "/v1/releases", {"version": GOOD, "percent": 5}, operator, 409, "exists"),
        (
            "POST",
            "/v1/releases",
            {"version": "latest", "percent": 5},
            operator,
            400,
            "invalid_message",
        ),
        (
            "POST",
            "/v1/releases",
            {"version": GOOD, "percent": 101},
            operator,
            400,
            "invalid_message",
        ),
        ("POST", "/v1/releases", {"version": GOOD}, operator, 400, "invalid_message"),
        (
            "POST",
            "/v1/releases",
            {"version": GOOD, "percent": 5, "x": 1},
            operator,
            400,
            "invalid_message",
        ),
        ("GET", "/v1/releases/9.9.9", None, operator, 404, "not_found"),
        ("PUT", "/v1/releases/9.9.9/rollout", {"percent": 5}, operator, 404, "not_found"),
        (
            "PUT",
            f"/v1/releases/{GOOD}/rollout",
            {"percent": True},
            operator,
            400,
            "invalid_message",
        ),
        ("PUT", f"/v1/releases/{GOOD}/rollout", {}, operator, 400, "invalid_message"),
        ("POST", f"/v1/releases/{GOOD}/halt", {"reason": ""}, operator, 400, "invalid_message"),
        ("POST", "/v1/releases/9.9.9/halt", None, operator, 404, "not_found"),
        ("POST", "/v1/updates/reports", {"type": "poa"}, None, 400, "wrong_type"),
        ("GET", "/v1/updates/metadata/coordinator.db", None, None, 404, "not_found"),
        ("GET", "/v1/updates/metadata/..%2Fcoordinator.db", None, None, 404, "not_found"),
        (
            "GET",
            "/v1/updates/targets/agent/0.2.0/../../keys/timestamp.key",
            None,
            None,
            404,
            "not_found",
        ),
        ("GET", "/v1/updates/targets/keys/timestamp.key", None, None, 404, "not_found"),
    ]
    for method, path, body, token, status, code in cases:
        got, reply = coord.request(method, path, body, token=token)
        assert (got, (reply.get("error") or {}).get("code")) == (status, code), (path, body, reply)
    stranger = SigningKey.from_seed(b"\x09" * 32)
    report = {
        "type": "update_report",
        "device_id": stranger.device_id,
        "release": GOOD,
        "version": GOOD,
        "outcome": "updated",
        "detail": "",
        "timestamp": 1,
    }
    got, reply = coord.request(
        "POST", "/v1/updates/reports", sign(UpdateReport, report, stranger).to_dict()
    )
    assert (got, reply["error"]["code"]) == (403, "not_enrolled")
    key_body = {**report, "device_id": agent.device_id}
    forged = sign(UpdateReport, key_body, stranger).to_dict()
    got, reply = coord.request("POST", "/v1/updates/reports", forged)
    assert got == 401, reply
    assert coord.request("GET", "/v1/releases", token=operator)[1] == before


def test_offline_signing_through_the_cli(device, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    coord, agent, _, keys = device
    wheels = [str(path) for path in fake_release(tmp_path, "0.9.0")]
    metadata = coord.state_dir / "updates" / "metadata"
    before = sorted(p.name for p in metadata.iterdir())
    # Without the targets key nothing is signed, and the command says where the key is.
    refused = coord.cli("release", "publish", *wheels, "--rollout", "0", check=False)
    assert refused.returncode == 1 and "--keys" in refused.stderr
    assert sorted(p.name for p in metadata.iterdir()) == before
    staged = tmp_path / "stick"
    coord.cli("release", "stage", *wheels, "-o", str(staged))
    unsigned = coord.cli("release", "publish", str(staged), "--rollout", "0", check=False)
    assert unsigned.returncode == 1 and "not signed" in unsigned.stderr
    signed = coord.cli("release", "sign", str(staged), "--keys", str(keys)).stdout
    assert "agent/0.9.0/release.json" in signed
    coord.cli("release", "publish", str(staged), "--rollout", "0")
    _, detail = coord.request("GET", "/v1/releases/0.9.0", token=coord.token("operator"))
    assert (detail["state"], detail["percent"]) == ("rolling", 0)
    assert "0.9.0" in coord.cli("release", "list").stdout
    status = json.loads(coord.cli("release", "status", "--json").stdout)
    assert status["repository"]["versions"]["targets"] >= 4
    # At 0 % nobody is offered it.
    agent.wait_status(lambda s: s["flags"].get("release-0.9.0") is False)
    assert (agent.status_file() or {})["version"] == GOOD


def test_a_restart_keeps_the_release(device) -> None:  # type: ignore[no-untyped-def]
    _, agent, _, _ = device
    assert agent.stop() == 0
    offline = agent.status()  # no daemon: read from the state directory
    assert offline["running"] is False and offline["version"] == GOOD
    assert offline["updates"]["slot"] == GOOD and UNHEALTHY in offline["updates"]["failed"]
    agent.start()
    again = agent.wait_status(lambda s: s["coordinator"]["state"] == "active")
    assert again["version"] == GOOD and _updates(again)["slot"] == GOOD


def test_update_reports_are_exported_and_erased_with_the_device(device) -> None:  # type: ignore[no-untyped-def]
    coord, agent, _, _ = device
    operator = coord.token("operator")
    status, export = coord.request("GET", f"/v1/devices/{agent.device_id}/export", token=operator)
    assert status == 200
    assert {(r["release"], r["outcome"]) for r in export["update_reports"]} == {
        (GOOD, "updated"),
        (UNHEALTHY, "rolled_back"),
    }
    status, erased = coord.request("DELETE", f"/v1/devices/{agent.device_id}", token=operator)
    assert status == 200 and erased["deleted"]["update_reports"] == 2
    _, detail = coord.request("GET", f"/v1/releases/{GOOD}", token=operator)
    assert detail["reports"] == [] and detail["progress"]["updated"] == 0
