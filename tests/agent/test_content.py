"""The agent's content cache: only bytes of the named digest are kept or served, refusals
are told apart from outages, and the oldest unused content goes first."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from aeamc.agent.config import config_from_mapping
from aeamc.agent.content import ContentCache, ContentUnavailable
from aeamc.shared.runtime.configfiles import ConfigError
from aeamc.shared.tasks.wasm_kernel import MissingBlob


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


def test_a_damaged_file_is_never_served(tmp_path: Path) -> None:
    data = b"kernel bytes"
    (tmp_path / digest(data)).write_bytes(b"kernel bytez")
    cache = ContentCache(tmp_path, 1 << 20)
    with pytest.raises(MissingBlob, match="damaged"):
        cache.get(digest(data))
    with pytest.raises(MissingBlob):
        cache.get("../../etc/passwd")


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
