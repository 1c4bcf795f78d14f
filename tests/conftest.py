"""Fixtures every test layer shares, and which tests must share one pytest-xdist worker."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import stores

VECTORS_PATH = Path(__file__).parent / "vectors" / "v1.json"
TESTS = Path(__file__).parent

#: Tests that run together on one worker under ``pytest -n N`` (what ``make test`` runs),
#: keyed by path below tests/. Everything else is spread test by test.
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
    # One coordinator each, started once for the module's tests.
    "coordinator/test_api_contract.py": "api-contract",
    "coordinator/test_content_http.py": "content-http",
    "coordinator/test_overload.py": "overload",
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
    "updates/test_fleet.py",
    "packaging/",
    "fuzz/test_adversarial.py",
    "coordinator/test_api_contract.py",
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


#: Tests that run once per store, SQLite then PostgreSQL (``store``): the coordinator's
#: store, service and end-to-end tests, by path below tests/. Tests that read or copy the
#: SQLite file themselves, or test SQLite's own machinery, run on SQLite only.
BOTH_STORES: tuple[str, ...] = (
    "coordinator/test_api.py",
    "coordinator/test_content_http.py",
    "coordinator/test_crash.py",
    "coordinator/test_flow.py",
    "coordinator/test_heartbeat_batches.py",
    "coordinator/test_proof_groups.py",
    "coordinator/test_record_mirror.py",
    "coordinator/test_tls.py",
    "e2e/test_agent_coordinator.py",
    "e2e/test_network_loss.py",
    "e2e/test_wasm_work.py",
    "coordinator/test_attached_unit.py",
    "coordinator/test_content_unit.py",
    "coordinator/test_devices_unit.py",
    "coordinator/test_ingestion_unit.py",
    "coordinator/test_placement.py",
    "coordinator/test_progress_unit.py",
    "coordinator/test_scheduler_unit.py",
    "coordinator/test_spotchecks_unit.py",
    "coordinator/test_store_on_both.py",
)


def _where(nodeid: str) -> str:
    """A test id's path below tests/ (ids are relative to the repository root)."""
    return nodeid.split("::", 1)[0].removeprefix("tests/")


def _rank(where: str) -> int:
    return next(
        (i for i, prefix in enumerate(LONGEST_FIRST) if where.startswith(prefix)),
        len(LONGEST_FIRST),
    )


def worker_group(nodeid: str) -> str:
    """The unit a worker takes whole: a ``SAME_WORKER`` group, or else the test itself."""
    where = _where(nodeid)
    return next((g for prefix, g in SAME_WORKER.items() if where.startswith(prefix)), nodeid)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """On an xdist worker, put ``LONGEST_FIRST`` first (a stable sort: a file's tests keep
    their order); every worker sorts alike, so they agree on the order. Without xdist,
    the tests run in collection order."""
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: _rank(_where(item.nodeid)))


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Hand each worker whole ``worker_group``s, in collection order. (xdist's own
    ``xdist_group`` marks rename test ids, which this pytest no longer allows.)"""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return worker_group(nodeid)

    return GroupScheduling(config, log)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run the ``BOTH_STORES`` tests once per store, module by module. A module-scoped
    fixture that starts a coordinator must ask for ``store``, or pytest would keep the
    first store's coordinator for both."""
    if any(_where(metafunc.definition.nodeid).startswith(p) for p in BOTH_STORES):
        metafunc.parametrize("store", stores.STORES, indirect=True, scope="module")


@pytest.fixture(scope="module", autouse=True)
def store(request: pytest.FixtureRequest) -> Iterator[str]:
    """The store the coordinators of these tests use (``tests/support/stores.py``)."""
    wanted = getattr(request, "param", stores.current())
    before = stores.select(wanted)
    yield wanted
    stores.select(before)


@pytest.fixture(scope="session")
def vectors() -> dict[str, Any]:
    """The specification's test vectors (a verbatim copy of vectors/v1.json)."""
    return json.loads(VECTORS_PATH.read_text())
