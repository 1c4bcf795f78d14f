"""Fleet updates end to end: one coordinator with its TUF repository, 20 real agents under
their launchers, and real release wheels built from patched copies of the source tree.

The scenarios share the fleet and run in order: a 10 % rollout reaches exactly the §10
cohort, 100 % reaches everyone; a tampered file, replayed metadata and expired metadata
are refused with nothing installed; a release that crashes at start is rolled back by
every device that tried it, and its rollout halts by itself.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from aeamc.shared.identity import SigningKey
from tests.support.agent import GOOD_TELEMETRY, AgentProcess
from tests.support.coordinator import CoordinatorProcess
from tests.support.waiting import wait_for

from .releases import BASE, CRASH_AT_START, REPO, build_release

FLEET = 20
GOOD, TAMPERED, HELD_BACK, BROKEN = "0.2.0", "0.3.0", "0.3.1", "0.4.0"

# Twenty agents restart at once on each rollout: on a busy machine that takes minutes.
pytestmark = pytest.mark.timeout(600)


def cohort_bucket(flag: str, device_id: str) -> int:
    """SPEC §10, written out again here so the test does not trust the code it checks."""
    digest = hashlib.sha256((flag + ":" + device_id).encode("utf-8")).digest()
    return int.from_bytes(digest[0:8], "big") % 100


def test_cohort_formula_matches_the_vectors() -> None:
    vector = json.loads((REPO / "tests" / "vectors" / "v1.json").read_text())["feature_flag"]
    assert cohort_bucket(vector["flag"], vector["device_id"]) == vector["bucket"]


@dataclass
class Fleet:
    root: Path
    coord: CoordinatorProcess
    agents: list[AgentProcess]
    keys: Path
    wheels: dict[str, list[Path]]

    @property
    def ids(self) -> list[str]:
        return [a.device_id for a in self.agents]

    def release(self, *args: str) -> str:
        return self.coord.cli("release", *args).stdout

    def publish(self, version: str, percent: int) -> None:
        wheels = [str(w) for w in self.wheels[version]]
        self.release("publish", *wheels, "--rollout", str(percent), "--keys", str(self.keys))

    def detail(self, version: str) -> dict[str, Any]:
        status, body = self.coord.request(
            "GET", f"/v1/releases/{version}", token=self.coord.token("operator")
        )
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    def updates(self, agent: AgentProcess) -> dict[str, Any]:
        status = agent.status_file() or {}
        return status.get("updates") or {}

    def wait_all(self, predicate: Any, timeout: float = 60) -> None:
        """Until ``predicate(agent, status)`` holds for every agent (all alive)."""

        def check() -> list[str]:
            pending = []
            for a in self.agents:
                assert a.running, f"agent {a.device_id} exited: {a.log_text()[-3000:]}"
                status = a.status_file()
                if not status or not predicate(a, status):
                    pending.append(a.device_id)
            return pending

        deadline = time.monotonic() + timeout
        while pending := check():
            if time.monotonic() > deadline:
                stuck = next(a for a in self.agents if a.device_id == pending[0])
                raise AssertionError(
                    f"{len(pending)} agents not there: {pending}; the first: "
                    f"{stuck.status_file()}\n{stuck.log_text()[-4000:]}"
                )
            time.sleep(0.2)

    def slots(self, agent: AgentProcess) -> dict[str, Any]:
        path = agent.state_dir / "releases" / "slots.json"
        return json.loads(path.read_text()) if path.exists() else {}


def _seed(i: int) -> bytes:
    return hashlib.sha256(f"aeamc-update-fleet-{i}".encode()).digest()


@pytest.fixture(scope="module")
def update_fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet")
    builder = concurrent.futures.ThreadPoolExecutor(2)
    builds = {
        v: builder.submit(build_release, root / "build", v, CRASH_AT_START if v == BROKEN else None)
        for v in (GOOD, TAMPERED, HELD_BACK, BROKEN)
    }
    coord = CoordinatorProcess(
        root / "coord",
        settings={
            # No re-signing during the test: it replays and expires metadata by hand.
            "updates": {
                "resign_check_s": 1200.0,
                "timestamp_expiry_s": 3600,
                "halt_failure_share": 0.1,
            },
            "server": {"host": "127.0.0.1", "port": 0, "mdns": False},
        },
    )
    coord.init()
    keys = root / "offline-keys"
    coord.cli("release", "keygen", str(keys))
    coord.cli("release", "init", "--keys", str(keys))
    coord.start()
    agents: list[AgentProcess] = []
    try:
        status, body = coord.request(
            "POST", "/v1/tokens", {"role": "enroll", "uses": FLEET}, token=coord.token("operator")
        )
        assert status == 201, body
        for i in range(FLEET):
            agent = AgentProcess(
                root / f"agent-{i:02d}",
                coordinator_url=coord.url,
                token=body["token"],
                profile=[{"at_s": 0, **GOOD_TELEMETRY}],
                mdns=False,
                settings={
                    "telemetry": {"interval_s": 2.0},
                    # Twenty agents starting at once on two cores (next to other tests)
                    # take far longer than one; a good release must not be rolled back
                    # for that. The broken release crashes at start, so no test waits on it.
                    "updates": {"check_interval_s": 1.0, "health_deadline_s": 120.0},
                },
            )
            agent.state_dir.mkdir(parents=True)
            key_file = agent.state_dir / "identity.key"
            key_file.write_text(_seed(i).hex() + "\n")
            key_file.chmod(0o600)
            agent.init()
            assert agent.device_id == SigningKey.from_seed(_seed(i)).device_id
            agents.append(agent)
        with concurrent.futures.ThreadPoolExecutor(FLEET) as pool:
            list(pool.map(lambda a: a.start(timeout=60), agents))
        wheels = {v: f.result() for v, f in builds.items()}
        f = Fleet(root, coord, agents, keys, wheels)
        # Every agent enrolled and trusts the repository's first metadata.
        f.wait_all(
            lambda a, s: (
                s["coordinator"]["state"] == "active"
                and (s.get("updates") or {}).get("trusted_metadata", {}).get("timestamp") == 1
            )
        )
        yield f
    finally:
        builder.shutdown(wait=True)
        with concurrent.futures.ThreadPoolExecutor(FLEET) as pool:
            list(pool.map(lambda a: a.close(), agents))
        coord.stop()


def _on(version: str):  # type: ignore[no-untyped-def]
    """The agent runs ``version``, committed (no trial in progress)."""
    return lambda a, s: s["version"] == version and not (s.get("updates") or {}).get("trial")


def test_ten_percent_reaches_exactly_the_cohort(update_fleet: Fleet) -> None:
    flag = f"release-{GOOD}"
    cohort = {d for d in update_fleet.ids if cohort_bucket(flag, d) < 10}
    # The identities are fixed: this cohort is two devices, neither none nor everyone.
    assert len(cohort) == 2, cohort
    update_fleet.publish(GOOD, 10)
    in_cohort = [a for a in update_fleet.agents if a.device_id in cohort]
    others = [a for a in update_fleet.agents if a.device_id not in cohort]
    started = int(time.time() * 1000)
    wait_for(lambda: all(_on(GOOD)(a, a.status_file() or {}) for a in in_cohort), 60)
    # Everyone else has seen the flag (off for it) and checked for updates since.
    for a in others:
        a.wait_status(
            lambda s: (
                s["flags"].get(flag) is False
                and (s.get("updates") or {}).get("last_check_ms", 0) > started + 1000
            )
        )
    for a in others:
        status = a.status_file() or {}
        assert status["version"] == BASE and update_fleet.updates(a)["installed"] == []
    wait_for(lambda: len(update_fleet.detail(GOOD)["reports"]) == len(cohort))
    detail = update_fleet.detail(GOOD)
    assert {r["device_id"] for r in detail["reports"]} == cohort
    assert {(r["outcome"], r["version"]) for r in detail["reports"]} == {("updated", GOOD)}
    assert detail["progress"]["targeted"] == len(cohort)
    assert detail["state"] == "rolling"
    # The previous release (the base installation) is kept to roll back to.
    for a in in_cohort:
        assert update_fleet.slots(a)["active"] == GOOD and update_fleet.slots(a)["previous"] == ""


def test_raising_to_all_only_adds_devices(update_fleet: Fleet) -> None:
    first = {
        a.device_id: (a.status_file() or {})["pid"]
        for a in update_fleet.agents
        if (a.status_file() or {})["version"] == GOOD
    }
    update_fleet.release("rollout", GOOD, "--percent", "100")
    update_fleet.wait_all(_on(GOOD), timeout=90)
    wait_for(lambda: update_fleet.detail(GOOD)["progress"]["updated"] == FLEET, 30)
    # The first cohort was not touched again: same daemon processes.
    for a in update_fleet.agents:
        if a.device_id in first:
            assert (a.status_file() or {})["pid"] == first[a.device_id]
    progress = update_fleet.detail(GOOD)["progress"]
    assert progress == {
        "targeted": FLEET,
        "updated": FLEET,
        "failed": 0,
        "running": FLEET,
        "failure_share": 0.0,
    }
    text = update_fleet.release("status")
    assert f"fleet: {GOOD}: {FLEET}" in text and f"{FLEET} updated, 0 failed" in text
    status, metrics = update_fleet.coord.request("GET", "/metrics")
    assert status == 200
    assert f'aeamc_coordinator_agent_versions{{version="{GOOD}"}} {FLEET}.0' in metrics.decode()


def _repo(update_fleet: Fleet) -> Path:
    return update_fleet.coord.state_dir / "updates"


def _wait_for_reports(update_fleet: Fleet, version: str, devices: set[str]) -> None:
    """Until the coordinator holds a report on ``version`` from each of ``devices``; a
    timeout shows what the coordinator and the first silent device said."""

    def missing() -> set[str]:
        return devices - {r["device_id"] for r in update_fleet.detail(version)["reports"]}

    def explain() -> str:
        silent = next(a for a in update_fleet.agents if a.device_id in missing())
        return (
            f"no report from {sorted(missing())}\n"
            f"coordinator:\n{update_fleet.coord.log_text()[-4000:]}\n"
            f"agent {silent.device_id}:\n{silent.log_text()[-4000:]}"
        )

    wait_for(lambda: not missing(), 30, explain=explain)


def test_tampered_package_is_refused(update_fleet: Fleet) -> None:
    update_fleet.publish(TAMPERED, 0)
    [wheel] = (_repo(update_fleet) / "targets" / "agent" / TAMPERED).glob("*.aeamc_agent-*.whl")
    data = bytearray(wheel.read_bytes())
    data[len(data) // 2] ^= 0x01  # same length, one bit off: only the hash can tell
    wheel.write_bytes(bytes(data))
    update_fleet.release("rollout", TAMPERED, "--percent", "100")
    wait_for(lambda: update_fleet.detail(TAMPERED)["state"] == "halted", 60)
    # Every device that was offered it refused it; the rollout halted after the first.
    # Settled: the flag is off everywhere and no download is still under way.
    update_fleet.wait_all(lambda a, s: s["flags"].get(f"release-{TAMPERED}") is False and _idle(s))
    refused = {
        a.device_id for a in update_fleet.agents if TAMPERED in update_fleet.updates(a)["refused"]
    }
    assert refused, "no device was offered the tampered release"
    for a in update_fleet.agents:
        updates = update_fleet.updates(a)
        if a.device_id in refused:
            assert "LengthOrHashMismatchError" in updates["refused"][TAMPERED]
        assert (a.status_file() or {})["version"] == GOOD
        assert updates["installed"] == [GOOD]
        assert not (a.state_dir / "releases" / TAMPERED).exists()
    _wait_for_reports(update_fleet, TAMPERED, refused)
    detail = update_fleet.detail(TAMPERED)
    assert {r["device_id"] for r in detail["reports"]} == refused
    assert {r["outcome"] for r in detail["reports"]} == {"refused"}
    assert "failed" in detail["halt_reason"]


def test_replayed_metadata_is_refused(update_fleet: Fleet) -> None:
    metadata = _repo(update_fleet) / "metadata"
    old = (metadata / "timestamp.json").read_bytes()
    old_version = json.loads(old)["signed"]["version"]
    update_fleet.publish(HELD_BACK, 0)
    update_fleet.wait_all(
        lambda a, s: (
            (s.get("updates") or {}).get("trusted_metadata", {}).get("timestamp", 0) > old_version
        )
    )
    # An attacker (or a stale mirror) serves the older, validly signed timestamp...
    _replace(metadata / "timestamp.json", old)
    # ...while the release is offered to everyone: nobody may act on it.
    update_fleet.release("rollout", HELD_BACK, "--percent", "100")
    update_fleet.wait_all(
        lambda a, s: (
            s["flags"].get(f"release-{HELD_BACK}") is True
            and "BadVersionNumberError" in ((s.get("updates") or {}).get("last_error") or "")
        )
    )
    _nothing_installed(update_fleet, HELD_BACK)


def test_expired_metadata_is_refused(update_fleet: Fleet) -> None:
    from aeamc.coordinator.config import load_config
    from aeamc.coordinator.updates.repository import Repository

    config = load_config(update_fleet.coord.config_path)
    # Newer versions, properly signed with the real online keys, but long expired: what a
    # client sees from a repository that stopped re-signing (a freeze attack). Made in a
    # copy and signed twice there, since the replay above left an older timestamp served:
    # once would only reach the version the devices already trust.
    shadow = update_fleet.root / "shadow-repo"
    shutil.copytree(_repo(update_fleet), shadow, ignore=shutil.ignore_patterns("lock"))
    past = Repository(
        shadow, config.updates, state_dir=config.state_dir, clock=lambda: _utc_now() - _days(30)
    )
    past.refresh_online(force=True)
    past.refresh_online(force=True)
    metadata = _repo(update_fleet) / "metadata"
    for name in sorted(p.name for p in (shadow / "metadata").glob("*.snapshot.json")):
        if not (metadata / name).exists():
            _replace(metadata / name, (shadow / "metadata" / name).read_bytes())
    _replace(metadata / "timestamp.json", (shadow / "metadata" / "timestamp.json").read_bytes())
    update_fleet.wait_all(
        lambda a, s: "ExpiredMetadataError" in ((s.get("updates") or {}).get("last_error") or "")
    )
    _nothing_installed(update_fleet, HELD_BACK)
    # Recovery: halt the held-back release, re-sign; every device trusts the repository again.
    update_fleet.release("halt", HELD_BACK, "--reason", "test over")
    update_fleet.wait_all(lambda a, s: s["flags"].get(f"release-{HELD_BACK}") is False)
    update_fleet.release("refresh")
    update_fleet.wait_all(lambda a, s: (s.get("updates") or {}).get("last_error") is None)
    _nothing_installed(update_fleet, HELD_BACK)


def test_broken_release_rolls_back_and_halts(update_fleet: Fleet) -> None:
    flag = f"release-{BROKEN}"
    cohort = {d for d in update_fleet.ids if cohort_bucket(flag, d) < 30}
    assert 2 <= len(cohort) < FLEET, cohort
    update_fleet.publish(BROKEN, 30)
    wait_for(lambda: update_fleet.detail(BROKEN)["state"] == "halted", 90)
    # Every device has seen the halt; none is still trying the release.
    update_fleet.wait_all(
        lambda a, s: (
            s["flags"].get(flag) is False
            and _on(GOOD)(a, s)
            and _idle(s)
            and s["coordinator"]["state"] == "active"
        ),
        timeout=90,
    )
    tried = {
        a.device_id
        for a in update_fleet.agents
        if BROKEN in update_fleet.slots(a).get("failed", {})
    }
    assert tried and tried <= cohort
    wait_for(lambda: len(update_fleet.detail(BROKEN)["reports"]) == len(tried), 30)
    detail = update_fleet.detail(BROKEN)
    assert {r["device_id"] for r in detail["reports"]} == tried
    assert {(r["outcome"], r["version"]) for r in detail["reports"]} == {("rolled_back", GOOD)}
    for a in update_fleet.agents:
        slots = update_fleet.slots(a)
        assert slots["active"] == GOOD and slots["trial"] is None
        assert not (a.state_dir / "releases" / BROKEN).exists()
        if a.device_id in tried:
            assert "exited with status 1" in slots["failed"][BROKEN]
            assert "broken on purpose" in a.log_text()
    assert f"of {len(cohort)} targeted devices failed" in detail["halt_reason"]
    text = update_fleet.release("status", BROKEN)
    assert "halted" in text and "rolled_back" in text


def _idle(status: dict[str, Any]) -> bool:
    """A running daemon with no update under way (none downloading, waiting or restarting)."""
    return bool(status.get("running")) and (status.get("updates") or {}).get("state") == "idle"


def _nothing_installed(update_fleet: Fleet, version: str) -> None:
    for a in update_fleet.agents:
        assert (a.status_file() or {})["version"] == GOOD
        assert update_fleet.updates(a)["installed"] == [GOOD]
        assert not (a.state_dir / "releases" / version).exists()
    assert update_fleet.detail(version)["reports"] == []


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".test")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _utc_now() -> Any:
    import datetime as dt

    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _days(n: int) -> Any:
    import datetime as dt

    return dt.timedelta(days=n)
