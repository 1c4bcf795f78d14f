"""The coordinator's signing key in a file (the default keystore).

The file holds the 32-byte Ed25519 seed in hex, mode 0600; a file readable by others is
refused, because a leaked coordinator key lets anyone forge assignments and challenges.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from aeamc.shared.identity import SigningKey


class KeyFileError(Exception):
    pass


def create_key_file(path: Path) -> SigningKey:
    if path.exists():
        raise KeyFileError(f"{path} exists; refusing to overwrite an identity")
    key = SigningKey.from_seed(os.urandom(32))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.seed.hex() + "\n")
        f.flush()
        os.fsync(f.fileno())
    return key


def load_key_file(path: Path) -> SigningKey:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no key file (run `aeamc-coordinator init`)") from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileError(
            f"{path}: permissions {stat.filemode(st.st_mode)} are too open; chmod 600 it"
        )
    text = path.read_text().strip()
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(f"{path}: not a hex Ed25519 seed") from None
    if len(seed) != 32:
        raise KeyFileError(f"{path}: an Ed25519 seed is 32 bytes")
    return SigningKey.from_seed(seed)
