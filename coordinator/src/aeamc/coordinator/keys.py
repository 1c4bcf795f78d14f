"""The coordinator's signing key: a file (the default keystore) or a PKCS#11 token.

The file holds the 32-byte Ed25519 seed in hex, mode 0600; a file readable by others is
refused, because a leaked coordinator key lets anyone forge assignments and challenges.
With ``identity_key = "pkcs11:..."`` the key is generated in and used from the token and
never leaves it (docs/security-keys.md).
"""

from __future__ import annotations

import os
from pathlib import Path

from aeamc.shared.identity import SigningKey
from aeamc.shared.runtime.keyfile import KeyFileError, create_private, read_hex_secret
from aeamc.shared.runtime.pkcs11 import (
    Ed25519HsmSigner,
    Pkcs11Error,
    ensure_ed25519,
    is_pkcs11_uri,
)

__all__ = ["KeyFileError", "create_key_file", "ensure_identity", "load_identity", "load_key_file"]


def create_key_file(path: Path) -> SigningKey:
    """A new identity from the OS RNG, its seed stored in ``path``; never overwrites one."""
    key = SigningKey.from_seed(os.urandom(32))
    create_private(path, (key.seed.hex() + "\n").encode(), what="coordinator identity")
    return key


def load_key_file(path: Path) -> SigningKey:
    """The identity whose seed ``path`` holds; a file others can read is refused."""
    hint = "run `aeamc-coordinator init`"
    return SigningKey.from_seed(read_hex_secret(path, 32, kind="Ed25519 seed", hint=hint))


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
