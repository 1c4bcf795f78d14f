"""Files replaced whole (aeamc.shared.runtime.files): a reader sees the old content or the
new, a private file is private from its first byte, and a failed write leaves the old file
as it was and nothing else behind."""

from __future__ import annotations

import errno
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from aeamc.shared.runtime import files
from aeamc.shared.runtime.files import TEMP_GLOB, atomic_write


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def no_umask() -> Iterator[None]:
    """Nothing taken off the modes asked for, whatever the machine's umask."""
    old = os.umask(0)
    yield
    os.umask(old)


@pytest.mark.parametrize("durable", [True, False])
def test_the_content_is_replaced_whole(tmp_path: Path, durable: bool) -> None:
    target = tmp_path / "state.json"
    atomic_write(target, b"old", mode=0o644)
    with target.open("rb") as reader:
        atomic_write(target, b"the new content", mode=0o644, durable=durable)
        # A new file took the name: whoever had the old one open still reads it whole.
        assert reader.read() == b"old"
    assert target.read_bytes() == b"the new content"
    assert names(tmp_path) == ["state.json"]


def test_a_private_file_is_private_from_its_first_byte(
    tmp_path: Path, no_umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mode is set when the temporary file is created, before anything is written:
    there is no moment at which a key is readable by others."""
    at_creation: list[int] = []
    fdopen = os.fdopen

    def observed(fd: int, *args: object, **kwargs: object) -> object:
        at_creation.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return fdopen(fd, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr(files.os, "fdopen", observed)
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    cert.write_bytes(b"a world-readable file")
    cert.chmod(0o644)
    atomic_write(key, b"secret", mode=0o600)
    atomic_write(cert, b"certificate", mode=0o644)
    atomic_write(cert, b"now a secret", mode=0o600)  # replacing: the new mode, not the old
    assert at_creation == [0o600, 0o644, 0o600]
    assert (mode(key), mode(cert)) == (0o600, 0o600)


def test_the_umask_still_applies(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        atomic_write(tmp_path / "status.json", b"{}", mode=0o644)
    finally:
        os.umask(old)
    assert mode(tmp_path / "status.json") == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "seq"
    atomic_write(target, b"41\n", mode=0o644)

    def failing_disk(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(files.os, "fsync", failing_disk)
    with pytest.raises(OSError, match="Input/output error"):
        atomic_write(target, b"42\n", mode=0o644)
    assert target.read_bytes() == b"41\n"
    assert names(tmp_path) == ["seq"]


def test_a_failed_rename_leaves_no_temporary_file(tmp_path: Path) -> None:
    """The target cannot be replaced (a directory is in the way): the error is the
    caller's, the directory is untouched, and the bytes written so far are removed."""
    blocked = tmp_path / "identity.key"
    blocked.mkdir()
    (blocked / "inside").write_bytes(b"kept")
    with pytest.raises(OSError):
        atomic_write(blocked, b"secret", mode=0o600)
    assert names(tmp_path) == ["identity.key"] and names(blocked) == ["inside"]
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "no-such-dir" / "file", b"x", mode=0o644)
    assert list(tmp_path.glob(TEMP_GLOB)) == []


def test_concurrent_writers_never_mix_their_content(tmp_path: Path) -> None:
    """Threads of one process replacing one file each use their own temporary file, so
    the file always holds one writer's content whole."""
    target = tmp_path / "status.json"
    versions = [bytes([i]) * 65536 for i in range(4)]
    atomic_write(target, versions[0], mode=0o644)
    seen: set[bytes] = set()
    errors: list[BaseException] = []

    def write(data: bytes) -> None:
        try:
            for _ in range(25):
                atomic_write(target, data, mode=0o644, durable=False)
                seen.add(target.read_bytes())
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(v,)) for v in versions]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert seen <= set(versions)
    assert target.read_bytes() in versions
    assert names(tmp_path) == ["status.json"]


def test_temporary_files_are_found_by_their_pattern(tmp_path: Path) -> None:
    """What a crash leaves behind is what the agent's queue and outbox sweep at start."""
    fd, tmp = files._create_temp(tmp_path / "000001-t.json", 0o600)
    os.close(fd)
    assert list(tmp_path.glob(TEMP_GLOB)) == [tmp]
    assert tmp.name.startswith(".000001-t.json.tmp-")
