"""Fixtures every test layer shares, and which tests must share one pytest-xdist worker."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

VECTORS_PATH = Path(__file__).parent / "vectors" / "v1.json"
TESTS = Path(__file__).parent

#: Tests that run together on one worker under ``pytest -n N --dist loadgroup`` (what
#: ``make test`` runs), keyed by path below tests/. Everything else is spread freely.
SAME_WORKER: dict[str, str] = {
    # Session fixtures build both Debian packages (twice over, for upgrades): once per run.
    "packaging/": "packaging",
    # Package fixtures start one coordinator, fleet and browser for every dashboard test.
    "dashboard/": "dashboard",
    # Module fixtures build agent releases and start a coordinator (and agents) once, and
    # the tests then walk through one rollout in file order.
    "adversary/test_rollout_reports.py": "rollout-reports",
    "updates/test_device.py": "updates-device",
    "updates/test_fleet.py": "updates-fleet",
    # One coordinator with a prepared state takes every fuzz family, and the last test
    # checks the totals of all of them.
    "fuzz/test_adversarial.py": "fuzz-adversarial",
    # Real mDNS on this host's loopback is one shared medium: a test that lets an agent
    # pick any coordinator it hears must not hear another test's (devnet's included).
    "agent/test_mdns.py": "loopback-mdns",
    "coordinator/test_discovery.py": "loopback-mdns",
    "e2e/test_devnet.py": "loopback-mdns",
}


#: Under xdist, these start first, in this order: the longest groups and tests (minutes of
#: wall time each, measured on two cores) would otherwise start last and leave the other
#: workers idle at the end. An entry missing here costs time, never correctness.
LONGEST_FIRST: tuple[str, ...] = (
    "packaging/",
    "updates/test_fleet.py",
    "fuzz/test_adversarial.py",
    "bench/",
    "anchoring/test_process.py",
    "e2e/test_devnet.py",
    "agent/test_mdns.py",
    "coordinator/test_discovery.py",
    "updates/test_device.py",
    "coordinator/test_crash.py",
    "e2e/",
    "adversary/test_cheaters.py",
    "dashboard/",
    "adversary/test_rollout_reports.py",
)


def _where(item: pytest.Item) -> str:
    try:
        return item.path.relative_to(TESTS).as_posix()
    except ValueError:
        return ""


def _rank(where: str) -> int:
    return next(
        (i for i, prefix in enumerate(LONGEST_FIRST) if where.startswith(prefix)),
        len(LONGEST_FIRST),
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of ``SAME_WORKER`` with their ``xdist_group``; on an xdist worker,
    also put ``LONGEST_FIRST`` first (a stable sort: a file's tests keep their order).
    Without xdist both are no-ops and the tests run in collection order."""
    for item in items:
        where = _where(item)
        for prefix, group in SAME_WORKER.items():
            if where.startswith(prefix):
                item.add_marker(pytest.mark.xdist_group(group))
                break
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: _rank(_where(item)))


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    """The specification's test vectors (a verbatim copy of vectors/v1.json)."""
    return json.loads(VECTORS_PATH.read_text())
