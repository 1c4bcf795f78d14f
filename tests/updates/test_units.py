"""Fleet updates without a fleet: release logic, the TUF repository's signing, expiry and
versioning, the offline-key workflow, and bad input refused with nothing changed."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from tuf.api.metadata import Metadata

from aeamc.coordinator.config import ConfigError, UpdatesConfig, parse_config
from aeamc.coordinator.updates.repository import Repository, RepositoryError, sign_staged
from aeamc.coordinator.updates.signing import RoleKeyError, keygen
from aeamc.shared.errors import ProtocolError
from aeamc.shared.identity import SigningKey
from aeamc.shared.messages import parse_signed, sign
from aeamc.shared.releases import (
    Progress,
    UpdateReport,
    choose_release,
    flag_for,
    is_version,
    newer,
    should_halt,
    version_key,
    version_of_flag,
)
from tests.updates.releases import fake_release

# -- pure logic --------------------------------------------------------------------------------


def test_versions_sort_as_pep_440() -> None:
    ordered = ["0.9", "0.10.0.dev1", "0.10.0a1", "0.10.0rc2", "0.10", "0.10.0.post1", "0.10.1"]
    assert sorted(reversed(ordered), key=version_key) == ordered
    assert not newer("1.0", "1.0.0") and not newer("1.0.0", "1.0")
    assert not is_version("1.0-rc1") and not is_version("v1") and not is_version("")
    with pytest.raises(ValueError):
        version_key("latest")
    with pytest.raises(ValueError):
        flag_for("../etc")
    assert version_of_flag("release-0.2.0") == "0.2.0"
    assert version_of_flag("release-x") is None and version_of_flag("other") is None


def test_choose_release_takes_the_newest_offered_that_did_not_fail() -> None:
    flags = {"release-0.2.0": True, "release-0.3.0": True, "release-0.4.0": False, "x": True}
    assert choose_release(flags, "0.1.0") == "0.3.0"
    assert choose_release(flags, "0.1.0", failed=["0.3.0"]) == "0.2.0"
    assert choose_release(flags, "0.3.0") is None  # never a downgrade, nor the same
    assert choose_release({}, "0.1.0") is None


def test_halting_is_hawkbit_style() -> None:
    assert not should_halt(Progress(targeted=10, updated=9, failed=1, running=9), 0.1)
    assert should_halt(Progress(targeted=10, updated=8, failed=2, running=8), 0.1)
    assert not should_halt(Progress(targeted=10, updated=0, failed=2, running=0), 0.1, 3)
    assert not should_halt(Progress(targeted=0, updated=0, failed=0, running=0), 0.0)
    assert Progress(4, 1, 1, 1).to_dict()["failure_share"] == 0.25


def test_update_reports_are_signed_and_strict() -> None:
    key = SigningKey.from_seed(b"\x05" * 32)
    body = {
        "type": "update_report",
        "device_id": key.device_id,
        "release": "0.2.0",
        "version": "0.1.0",
        "outcome": "rolled_back",
        "detail": "exited with status 1",
        "timestamp": 1,
    }
    report = sign(UpdateReport, body, key)
    parsed = parse_signed(report.to_dict(), UpdateReport)
    parsed.verify(key.public_key)
    with pytest.raises(ProtocolError):
        parse_signed({**report.to_dict(), "outcome": "exploded"}, UpdateReport)
    with pytest.raises(ProtocolError):
        parse_signed({**report.to_dict(), "release": "0.3.0"}, UpdateReport).verify(key.public_key)


def test_updates_config_is_checked() -> None:
    assert parse_config({}).updates == UpdatesConfig()
    for bad in (
        {"halt_failure_share": 1.5},
        {"timestamp_expiry_s": 30},
        {"resign_check_s": 50000.0},
        {"targets_key": "pkcs11:nonsense=1"},
        {"no_such_key": 1},
    ):
        with pytest.raises(ConfigError):
            parse_config({"updates": bad})


# -- the repository ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.fixture
def repo(tmp_path: Path) -> tuple[Repository, Path, Clock]:
    keys = tmp_path / "offline"
    keygen(keys)
    clock = Clock()
    r = Repository(
        tmp_path / "state" / "updates", UpdatesConfig(), state_dir=tmp_path / "state", clock=clock
    )
    r.init(keys)
    return r, keys, clock


def _files(r: Repository) -> dict[str, bytes]:
    return {
        str(p.relative_to(r.dir)): p.read_bytes() for p in sorted(r.dir.rglob("*")) if p.is_file()
    }


def test_publishing_signs_targets_snapshot_timestamp(repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r, keys, _ = repo
    assert r.versions() == {"root": 1, "targets": 1, "snapshot": 1, "timestamp": 1}
    assert r.publish(fake_release(tmp_path / "w", "0.2.0"), keys) == "0.2.0"
    assert r.versions() == {"root": 1, "targets": 2, "snapshot": 2, "timestamp": 2}
    root, targets = r.root(), r.targets()
    root.verify_delegate("targets", targets)
    root.verify_delegate("snapshot", r.snapshot())
    root.verify_delegate("timestamp", r.timestamp())
    assert r.snapshot().signed.meta["targets.json"].version == 2
    assert r.timestamp().signed.snapshot_meta.version == 2
    manifest_info = targets.signed.targets["agent/0.2.0/release.json"]
    stored = r.target_file(f"agent/0.2.0/{manifest_info.hashes['sha256']}.release.json")
    assert stored is not None
    assert json.loads(stored.read_bytes())["wheels"] == [
        "aeamc_agent-0.2.0-py3-none-any.whl",
        "aeamc_shared-0.2.0-py3-none-any.whl",
    ]
    assert [x.version for x in r.releases()] == ["0.2.0"]
    # Consistent snapshots: every version a client may still be walking stays served.
    for name in ("1.root.json", "1.targets.json", "2.targets.json", "2.snapshot.json"):
        assert r.metadata_file(name) is not None
    for bad in ("../coordinator.db", "root.JSON", "0.root.json", "x.json", "keys/timestamp.key"):
        assert r.metadata_file(bad) is None
    for bad in ("agent/0.2.0/../../keys/timestamp.key", "agent/../x", "keys/x", "agent/0.2.0/a"):
        assert r.target_file(bad) is None


def test_bad_publishes_change_nothing(repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r, keys, _ = repo
    r.publish(fake_release(tmp_path / "w2", "0.2.0"), keys)
    before = _files(r)
    other = tmp_path / "other-keys"
    keygen(other)
    cases = [
        (lambda: r.publish(fake_release(tmp_path / "w3", "0.3.0"), None), "offline"),
        (lambda: r.publish(fake_release(tmp_path / "w3", "0.3.0"), other), "not the one"),
        (lambda: r.publish(fake_release(tmp_path / "w1", "0.1.0"), keys), "not newer"),
        (lambda: r.publish(fake_release(tmp_path / "w2", "0.2.0"), keys), "not newer"),
        (
            lambda: r.publish(fake_release(tmp_path / "w4", "0.4.0", names=("agent",)), keys),
            "aeamc_shared",
        ),
        (
            lambda: r.publish(
                [
                    tmp_path / "w2" / "aeamc_agent-0.2.0-py3-none-any.whl",
                    *fake_release(tmp_path / "w5", "0.5.0", names=("shared",)),
                ],
                keys,
            ),
            "disagree",
        ),
    ]
    for attempt, message in cases:
        with pytest.raises((RepositoryError, RoleKeyError), match=message):
            attempt()
        assert _files(r) == before
    with pytest.raises(RepositoryError, match="already holds"):
        r.init(keys)


def test_offline_targets_key_workflow(repo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    r, keys, _ = repo
    staged = tmp_path / "usb-stick"
    r.stage(fake_release(tmp_path / "w", "0.2.0"), staged)
    with pytest.raises(RepositoryError, match="not signed"):
        r.publish_staged(staged)  # not signed yet
    assert r.versions()["targets"] == 1
    sign_staged(staged, keys)  # on the offline machine
    # Tampering with a staged file after signing is caught before anything is stored.
    wheel = staged / "files" / "aeamc_agent-0.2.0-py3-none-any.whl"
    good = wheel.read_bytes()
    wheel.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(RepositoryError, match="does not match"):
        r.publish_staged(staged)
    assert r.versions()["targets"] == 1 and not r.has_release("0.2.0")
    wheel.write_bytes(good)
    assert r.publish_staged(staged) == "0.2.0"
    assert r.has_release("0.2.0") and r.versions()["targets"] == 2
    r.root().verify_delegate("targets", r.targets())
    with pytest.raises(RepositoryError, match="version 2"):
        r.publish_staged(staged)  # the same staged metadata twice: stale now


def test_online_roles_are_renewed_before_they_expire(repo) -> None:  # type: ignore[no-untyped-def]
    r, _, clock = repo
    config = r.config
    assert r.refresh_online() == []  # fresh: nothing to do
    clock.now += dt.timedelta(seconds=config.timestamp_expiry_s * 0.6)
    assert r.refresh_online() == ["timestamp"]
    assert r.versions()["timestamp"] == 2 and r.versions()["snapshot"] == 1
    ts: Metadata = r.timestamp()
    assert ts.signed.expires == clock.now + dt.timedelta(seconds=config.timestamp_expiry_s)
    clock.now += dt.timedelta(days=config.snapshot_expiry_days * 0.6)
    assert r.refresh_online() == ["snapshot", "timestamp"]
    assert r.versions() == {"root": 1, "targets": 1, "snapshot": 2, "timestamp": 3}
    assert r.timestamp().signed.snapshot_meta.version == 2
    r.root().verify_delegate("timestamp", r.timestamp())


def test_release_version_of_wheels(tmp_path: Path) -> None:
    assert Repository.release_version(fake_release(tmp_path / "a", "0.2.0")) == "0.2.0"
    mixed = fake_release(tmp_path / "b", "0.2.0", names=("agent",))
    mixed += fake_release(tmp_path / "c", "0.3.0", names=("shared",))
    assert Repository.release_version(mixed) is None
    assert Repository.release_version([tmp_path / "notes.txt"]) is None


# -- the launcher's decisions, on real state files ----------------------------------------------


def _launcher(tmp_path: Path):  # type: ignore[no-untyped-def]
    from aeamc.agent.config import config_from_mapping
    from aeamc.agent.launcher import Launcher

    config = config_from_mapping({"state_dir": str(tmp_path / "state")})
    return Launcher(config, tmp_path / "agent.toml")


def _install(slots, version: str) -> None:  # type: ignore[no-untyped-def]
    from aeamc.agent.slots import COMPLETE

    slots.site(version).mkdir(parents=True)
    (slots.path(version) / COMPLETE).write_text("{}\n")


def test_a_package_newer_than_the_active_release_takes_over(tmp_path: Path) -> None:
    from aeamc.agent.slots import SlotState

    launcher = _launcher(tmp_path)
    _install(launcher.slots, "0.0.9")
    launcher.slots.save(SlotState(active="0.0.9", previous=""))
    state = launcher._prepare()
    assert state.active == "" and launcher.slots.load().active == ""
    assert not launcher.slots.path("0.0.9").exists()


def test_a_trial_that_never_confirmed_is_rolled_back_at_the_next_start(tmp_path: Path) -> None:
    from aeamc.agent.launcher import MAX_TRIAL_STARTS
    from aeamc.agent.slots import SlotState, Trial

    launcher = _launcher(tmp_path)
    for version in ("9.0.0", "9.1.0"):
        _install(launcher.slots, version)
    trial = Trial(version="9.1.0", previous="9.0.0", started_ms=1, starts=MAX_TRIAL_STARTS)
    launcher.slots.save(SlotState(active="9.1.0", previous="", trial=trial))
    state = launcher._prepare()  # e.g. power cuts during each of its starts
    assert state.active == "9.0.0" and state.trial is None
    assert "did not confirm its health in 2 starts" in state.failed["9.1.0"]
    assert not launcher.slots.path("9.1.0").exists() and launcher.slots.installed("9.0.0")
    [(_, report)] = launcher.slots.reports()
    assert (report["release"], report["outcome"], report["version"]) == (
        "9.1.0",
        "rolled_back",
        "9.0.0",
    )
    # A request for a release that is not installed is ignored.
    launcher.slots.request("9.9.9")
    assert launcher._prepare().active == "9.0.0"
