"""Private files: read only from a descriptor whose mode was checked, never through a link."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aeamc.shared.runtime.keyfile import (
    KeyFileError,
    create_private,
    read_hex_secret,
    read_private,
)


def test_created_private_and_read_back(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "k.key"
    create_private(path, b"secret\n")
    assert path.stat().st_mode & 0o777 == 0o600
    assert read_private(path) == b"secret\n"
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        create_private(path, b"other")
    assert read_private(path) == b"secret\n"


def test_a_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    create_private(path, b"secret")
    for mode in (0o640, 0o604, 0o610):
        os.chmod(path, mode)
        with pytest.raises(KeyFileError, match=r"too open.*chmod 600"):
            read_private(path)


def test_a_symbolic_link_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "real.key"
    create_private(target, b"secret")
    link = tmp_path / "link.key"
    link.symlink_to(target)
    with pytest.raises(KeyFileError, match="cannot open"):
        read_private(link)
    with pytest.raises(KeyFileError):
        create_private(link, b"x")
    assert read_private(target) == b"secret"


def test_a_missing_file_names_what_and_how(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=r"none\.key: no wallet key \(run init\)$"):
        read_private(tmp_path / "none.key", what="wallet key", hint="run init")


@pytest.mark.parametrize(
    ("text", "message"),
    [("zz\n", "not a hex seed"), ("00\n", "is 32 bytes"), ("ab" * 33, "is 32 bytes")],
)
def test_hex_secrets(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "k.key"
    create_private(path, text.encode())
    with pytest.raises(KeyFileError, match=message):
        read_hex_secret(path, 32, kind="seed")


def test_hex_secret_with_prefix(tmp_path: Path) -> None:
    path = tmp_path / "k.key"
    create_private(path, b"0x" + b"01" * 32 + b"\n")
    assert read_hex_secret(path, 32, kind="seed") == b"\x01" * 32
