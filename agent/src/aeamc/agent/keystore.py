"""The device's Ed25519 identity in a key file (mode 0600), the default keystore.

The file holds the 32-byte seed as 64 hex characters. It is created exclusively and never
replaced unless the owner asks (``init --force``): a new key is a new device to the
coordinator, and every receipt signed with the old key would become unanswerable.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from aeamc.shared.identity import SigningKey

from .state import KEY_FILE, atomic_write, fsync_dir


class KeyFileError(Exception):
    """The key file is missing, malformed or not private enough to trust."""


def key_path(state_dir: Path) -> Path:
    return state_dir / KEY_FILE


def create_identity(state_dir: Path, *, force: bool = False) -> SigningKey:
    """Generate a key from the OS RNG and store it; refuse to overwrite unless ``force``."""
    path = key_path(state_dir)
    key = SigningKey.generate(os.urandom(32))
    data = (key.seed.hex() + "\n").encode()
    if force:
        atomic_write(path, data, mode=0o600)
        os.chmod(path, 0o600)
        return key
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise KeyFileError(
            f"{path} already exists: refusing to replace the device identity "
            "(use --force to create a new device identity)"
        ) from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(state_dir)
    return key


def load_identity(state_dir: Path) -> SigningKey:
    path = key_path(state_dir)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no identity key (run `aeamc-agent init`)") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        mode = stat.S_IMODE(os.fstat(f.fileno()).st_mode)
        if mode & 0o077:
            raise KeyFileError(
                f"{path} is accessible by other users (mode {mode:04o}); "
                f"the private key may have leaked. Fix with: chmod 600 {path}"
            )
        raw = f.read(200).strip()
    try:
        seed = bytes.fromhex(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        seed = b""
    if len(seed) != 32:
        raise KeyFileError(f"{path}: expected 64 hex characters (an Ed25519 seed)")
    return SigningKey.from_seed(seed)
