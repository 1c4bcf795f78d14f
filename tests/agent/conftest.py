"""Fixtures for the agent tests: a fake coordinator, configs, simulated telemetry, agents."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from aeamc.agent.config import AgentConfig
from aeamc.agent.daemon import Agent
from aeamc.agent.keystore import create_identity
from aeamc.agent.telemetry import SIMULATION_ENV
from tests.support.fixtures import coordinator  # noqa: F401

from .fakecoord import FakeCoordinator

SIM_ENV = {SIMULATION_ENV: "1"}
#: A sha256-chain chunk of this many iterations takes a few milliseconds.
FAST_PARAMS = {"seed": "ab" * 32, "iterations": 2_000}


def write_profile(path: Path, steps: list[dict[str, Any]] | None = None, **values: Any) -> None:
    """Replace the profile atomically (a new inode, so the agent sees the change at once)."""
    data = {"steps": steps if steps is not None else [{"at_s": 0, **values}]}
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


GOOD = {"battery_pct": 80, "charging": False, "cpu_temp_c": 45, "cpu_load_permille": 100}


async def eventually(
    predicate: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02
) -> Any:
    """Wait until ``predicate()`` is truthy; fail with what it last returned."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s (last: {value!r})")
        await asyncio.sleep(interval)


def test_config(tmp_path: Path, **overrides: Any) -> AgentConfig:
    state = tmp_path / "state"
    profile = tmp_path / "profile.json"
    if not profile.exists():
        write_profile(profile, **GOOD)
    base = AgentConfig(
        state_dir=state,
        listen_host="127.0.0.1",
        listen_port=0,
        heartbeat_interval_s=0.2,
        heartbeat_jitter=0.0,
        enroll_retry_s=0.2,
        telemetry_source="simulated",
        telemetry_profile=profile,
        telemetry_interval_s=0.05,
        retry_initial_s=0.05,
        retry_max_s=0.3,
        request_timeout_s=2.0,
        shutdown_grace_s=5.0,
        mdns_enabled=False,
    )
    return replace(base, **overrides)


test_config.__test__ = False  # type: ignore[attr-defined]


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``aeamc-agent`` configures the root logger; undo that after in-process CLI tests."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    named = {n: logging.getLogger(n).level for n in ("zeroconf", "aiohttp.access", "asyncio")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, lvl in named.items():
        logging.getLogger(name).setLevel(lvl)


@pytest.fixture
async def fake_coordinator() -> AsyncIterator[FakeCoordinator]:
    fc = await FakeCoordinator().start()
    yield fc
    await fc.stop()


AgentFactory = Callable[..., Awaitable[Agent]]


@pytest.fixture
async def make_agent(tmp_path: Path) -> AsyncIterator[AgentFactory]:
    """``await make_agent(coordinator_url=..., **config)``: a started agent, stopped at teardown."""
    agents: list[Agent] = []

    async def factory(*, start: bool = True, subdir: str = "", **overrides: Any) -> Agent:
        base = tmp_path / subdir if subdir else tmp_path
        base.mkdir(exist_ok=True)
        config = test_config(base, **overrides)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        if not (config.state_dir / "identity.key").exists():
            create_identity(config.state_dir)
        agent = Agent(config, env=SIM_ENV)
        agents.append(agent)
        if start:
            await agent.start()
        return agent

    yield factory
    for agent in agents:
        await agent.stop()
