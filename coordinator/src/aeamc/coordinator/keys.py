"""The coordinator's signing key: a file (the default keystore) or a PKCS#11 token.

The file holds the 32-byte Ed25519 seed in hex, mode 0600; a file readable by others is
refused, because a leaked coordinator key lets anyone forge assignments and challenges.
With ``identity_key = "pkcs11:..."`` the key is generated in and used from the token and
never leaves it (docs/security-keys.md).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from aeamc.shared.identity import SigningKey
from aeamc.shared.runtime.pkcs11 import (
    Ed25519HsmSigner,
    Pkcs11Error,
    ensure_ed25519,
    is_pkcs11_uri,
)


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


def load_identity(ref: str | Path) -> SigningKey | Ed25519HsmSigner:
    """The identity a ``pkcs11:`` URI or a key file path names."""
    if is_pkcs11_uri(ref):
        try:
            return Ed25519HsmSigner(str(ref))
        except Pkcs11Error as exc:
            raise KeyFileError(str(exc)) from None
    return load_key_file(Path(ref))


def ensure_identity(ref: str | Path) -> tuple[SigningKey | Ed25519HsmSigner, bool]:
    """The identity, created if missing (in the token for a URI); flag: whether created."""
    if is_pkcs11_uri(ref):
        try:
            return ensure_ed25519(str(ref))
        except Pkcs11Error as exc:
            raise KeyFileError(str(exc)) from None
    path = Path(ref)
    if path.exists():
        return load_key_file(path), False
    return create_key_file(path), True
