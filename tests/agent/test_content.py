"""The agent's content cache: only bytes of the named digest are kept or run, refusals
are told apart from outages, the oldest unused content goes first, and content damaged on
disk is caught where it is read, fetched again, and never proved."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest
import wasmtime

from aeamc.agent.config import config_from_mapping
from aeamc.agent.content import MAX_CONTENT_BYTES, ContentCache, ContentUnavailable
from aeamc.agent.daemon import Agent
from aeamc.agent.runner import MAX_CONTENT_REFETCHES
from aeamc.shared.messages import Assignment
from aeamc.shared.proofs import Trace
from aeamc.shared.runtime.configfiles import ConfigError
from aeamc.shared.tasks.wasm_kernel import MissingBlob, WasmKernel

from .conftest import FAST_PARAMS, AgentFactory, eventually
from .fakecoord import FakeCoordinator, agent_session


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def server(answers: dict[str, tuple[int, bytes]]):  # type: ignore[no-untyped-def]
    calls: list[str] = []

    async def fetch(name: str, max_bytes: int) -> tuple[int, bytes]:
        calls.append(name)
        return answers[name]

    return fetch, calls


async def test_fetched_once_then_served_from_disk(tmp_path: Path) -> None:
    data = os.urandom(3000)
    cache = ContentCache(tmp_path / "content", 1 << 20)
    fetch, calls = server({digest(data): (200, data)})
    await cache.ensure([digest(data)], fetch)
    await cache.ensure([digest(data)], fetch)
    assert calls == [digest(data)]
    assert cache.get(digest(data)) == data
    assert (tmp_path / "content" / digest(data)).stat().st_mode & 0o777 == 0o600


async def test_other_bytes_under_a_digest_are_refused_for_good(tmp_path: Path) -> None:
    """A tampered answer (or a coordinator mixing content up) is never kept or run."""
    wanted = digest(b"the client's module")
    cache = ContentCache(tmp_path / "content", 1 << 20)
    fetch, _ = server({wanted: (200, b"something else")})
    with pytest.raises(ContentUnavailable) as caught:
        await cache.ensure([wanted], fetch)
    assert caught.value.lasting and "other bytes" in str(caught.value)
    assert not cache.has(wanted)


@pytest.mark.parametrize(("status", "lasting"), [(404, True), (403, True), (503, False)])
async def test_refusals_last_outages_pass(tmp_path: Path, status: int, lasting: bool) -> None:
    name = digest(b"x")
    fetch, _ = server({name: (status, b"")})
    with pytest.raises(ContentUnavailable) as caught:
        await ContentCache(tmp_path, 1 << 20).ensure([name], fetch)
    assert caught.value.lasting is lasting


async def test_a_file_here_is_taken_as_it_is_until_found_damaged(tmp_path: Path) -> None:
    """Before a task only the presence of a file is checked (not its 16 MiB read and
    hashed): the worker's reader checks the digest. Once it is found damaged and
    discarded, the next ``ensure`` fetches it again."""
    data = b"kernel bytes"
    cache = ContentCache(tmp_path, 1 << 20)
    fetch, calls = server({digest(data): (200, data)})
    (tmp_path / digest(data)).write_bytes(b"kernel bytez")  # damaged on disk
    await cache.ensure([digest(data)], fetch)
    assert calls == []
    with pytest.raises(MissingBlob, match="another digest") as caught:
        WasmKernel(cache)._input(digest(data))
    assert caught.value.digest == digest(data)
    assert cache.discard(digest(data)) and not cache.has(digest(data))
    assert not cache.discard(digest(data))  # gone already
    await cache.ensure([digest(data)], fetch)
    assert calls == [digest(data)] and cache.get(digest(data)) == data
    with pytest.raises(MissingBlob):
        cache.get("../../etc/passwd")
    assert not cache.has("../../etc/passwd") and not cache.discard("../../etc/passwd")


async def test_a_file_that_cannot_be_content_is_fetched_again(tmp_path: Path) -> None:
    """Larger than any content, or not a regular file: not taken, fetched instead."""
    small, large = b"input", b"module"
    (tmp_path / digest(small)).write_bytes(b"\0" * (MAX_CONTENT_BYTES + 1))
    (tmp_path / digest(large)).symlink_to(tmp_path / digest(small))
    cache = ContentCache(tmp_path, 1 << 30)
    assert not cache.has(digest(small)) and not cache.has(digest(large))
    fetch, calls = server({digest(small): (200, small), digest(large): (200, large)})
    await cache.ensure([digest(small), digest(large)], fetch)
    assert calls == [digest(small), digest(large)]
    assert cache.get(digest(small)) == small and cache.get(digest(large)) == large


async def test_the_oldest_unused_content_goes_first(tmp_path: Path) -> None:
    blobs = [os.urandom(1000) for _ in range(3)]
    cache = ContentCache(tmp_path, 2500)
    fetch, _ = server({digest(b): (200, b) for b in blobs})
    for i, blob in enumerate(blobs[:2]):
        await cache.ensure([digest(blob)], fetch)
        os.utime(tmp_path / digest(blob), (time.time() - 100 + i, time.time() - 100 + i))
    await cache.ensure([digest(blobs[2])], fetch)
    assert not cache.has(digest(blobs[0]))
    assert cache.has(digest(blobs[1])) and cache.has(digest(blobs[2]))


@pytest.mark.parametrize(
    ("wasm", "message"),
    [
        ({"max_memory_mb": 0}, "wasm.max_memory_mb"),
        ({"max_fuel": 0}, "wasm.max_fuel"),
        ({"cache_max_bytes": -1}, "wasm.cache_max_bytes"),
        ({"enabled": "yes"}, "wasm.enabled"),
        ({"threads": 4}, "unknown key wasm.threads"),
    ],
)
def test_bad_wasm_settings_are_named(wasm: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_mapping({"wasm": wasm})


# -- content damaged on the device's disk, end to end through the runner ----------------------

#: A kernel whose every chunk's output is its input (so a damaged input would show).
ECHO = wasmtime.wat2wasm(
    """(module (memory (export "memory") 1)
    (func (export "aeamc_input") (param i32) (result i32) i32.const 16)
    (func (export "aeamc_output") (result i32) i32.const 16)
    (func (export "aeamc_run") (param i32 i32 i32) (result i32) local.get 2))"""
)
INPUT = b"the client's input, as it uploaded it"
CHUNKS = 3


def echo_task(fc: FakeCoordinator, device_id: str, task_id: str) -> Assignment:
    fc.content |= {digest(ECHO): ECHO, digest(INPUT): INPUT}
    params = {"module": digest(ECHO), "input": digest(INPUT), "fuel": 10**6, "memory_mb": 1}
    return fc.assignment(device_id, task_id=task_id, kind="wasm", params=params, chunks=CHUNKS)


async def accept(agent: Agent, a: Assignment) -> None:
    async with (
        agent_session(agent) as s,
        s.post(agent.endpoint() + "/v1/assignments", json=a.to_dict()) as r,
    ):
        assert r.status == 202, await r.text()


def fetched(fc: FakeCoordinator) -> list[str]:
    return [path.rsplit("/", 1)[1] for path, _ in fc.requests if path.startswith("/v1/content/")]


async def test_content_damaged_on_disk_is_fetched_again_and_the_task_proved(
    fake_coordinator: FakeCoordinator, make_agent: AgentFactory, tmp_path: Path
) -> None:
    """The input was cached by an earlier run and then damaged on disk. ``ensure`` takes
    the file as it is; the worker finds another digest and runs nothing; the file is
    deleted, fetched again, and the task proves what the client's bytes give."""
    content = tmp_path / "state" / "content"
    content.mkdir(parents=True)
    (content / digest(INPUT)).write_bytes(INPUT.replace(b"input", b"inpuT"))
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: agent.link.pin is not None)
    await accept(agent, echo_task(fake_coordinator, agent.device_id, "task-1"))

    await eventually(lambda: fake_coordinator.proofs, timeout=60)
    pot, output = fake_coordinator.proofs[0]
    assert pot.task_id == "task-1"
    assert output == Trace((INPUT,) * CHUNKS).output  # computed from the client's bytes
    # The module was missing: fetched; the input was here: fetched only once found damaged.
    assert fetched(fake_coordinator) == [digest(ECHO), digest(INPUT)]
    assert agent.metrics.tasks == {"interrupted": 1, "queued": 1}
    assert (content / digest(INPUT)).read_bytes() == INPUT
    assert list((agent.config.state_dir / "abandoned").iterdir()) == []


async def test_content_damaged_again_and_again_gives_the_task_up_without_a_proof(
    fake_coordinator: FakeCoordinator, make_agent: AgentFactory
) -> None:
    """A disk that damages the input every time it is stored never yields a proof, and
    does not hold the queue: the task is abandoned and the next one runs."""
    agent = await make_agent(coordinator_url=fake_coordinator.url)
    await eventually(lambda: agent.link.pin is not None)
    assert agent.runner is not None
    fetch_and_store = agent.runner.prepare

    async def prepare_then_damage(a: Assignment) -> None:
        await fetch_and_store(a)
        (agent.content.directory / digest(INPUT)).write_bytes(b"damaged")

    agent.runner.prepare = prepare_then_damage
    await accept(agent, echo_task(fake_coordinator, agent.device_id, "task-1"))
    following = fake_coordinator.assignment(agent.device_id, task_id="task-2", params=FAST_PARAMS)
    await accept(agent, following)

    await eventually(lambda: fake_coordinator.proofs, timeout=60)
    assert [pot.task_id for pot, _ in fake_coordinator.proofs] == ["task-2"]
    assert agent.metrics.tasks == {
        "interrupted": MAX_CONTENT_REFETCHES - 1,
        "abandoned": 1,
        "queued": 1,
    }
    assert fetched(fake_coordinator).count(digest(INPUT)) == MAX_CONTENT_REFETCHES
    (record,) = (agent.config.state_dir / "abandoned").iterdir()
    assert "content was damaged" in record.read_text()
