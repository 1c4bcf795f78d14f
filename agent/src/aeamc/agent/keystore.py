"""The device's Ed25519 identity: a key file (mode 0600, the default) or an HSM key.

The file holds the 32-byte seed as 64 hex characters. It is created exclusively and never
replaced unless the owner asks (``init --force``): a new key is a new device to the
coordinator, and every receipt signed with the old key would become unanswerable.

With ``identity_key = "pkcs11:..."`` the key is generated in and used from a PKCS#11
token (docs/security-keys.md); it never leaves the token and is never replaced from here.
"""

from __future__ import annotations

import os
from pathlib import Path

from aeamc.shared.identity import SigningKey
from aeamc.shared.runtime.files import atomic_write, fsync_dir
from aeamc.shared.runtime.keyfile import KeyFileError, create_private, read_hex_secret
from aeamc.shared.runtime.pkcs11 import (
    Ed25519HsmSigner,
    Pkcs11Error,
    Pkcs11Uri,
    ensure_ed25519,
    is_pkcs11_uri,
)

from .state import KEY_FILE

__all__ = [
    "KeyFileError",
    "create_identity",
    "describe",
    "identity_exists",
    "key_path",
    "load_identity",
]


def key_path(state_dir: Path, identity_key: str | None = None) -> Path:
    """The key file; ``identity_key`` (a path, not a ``pkcs11:`` URI) overrides the default."""
    if identity_key and not is_pkcs11_uri(identity_key):
        return Path(identity_key)
    return state_dir / KEY_FILE


def identity_exists(state_dir: Path, identity_key: str | None = None) -> bool:
    if is_pkcs11_uri(identity_key):
        return False  # init on a URI only ever adds a missing key
    return key_path(state_dir, identity_key).exists()


def describe(state_dir: Path, identity_key: str | None = None) -> str:
    """Where the key is, for humans (a URI without its pin-value)."""
    if is_pkcs11_uri(identity_key):
        return Pkcs11Uri.parse(str(identity_key)).redacted
    return str(key_path(state_dir, identity_key))


def create_identity(
    state_dir: Path, *, force: bool = False, identity_key: str | None = None
) -> SigningKey | Ed25519HsmSigner:
    """Generate a key from the OS RNG and store it; refuse to overwrite unless ``force``.

    For a ``pkcs11:`` URI the key is generated in the token when it has none yet, else the
    existing one is used; ``force`` never deletes a key from a token.
    """
    if is_pkcs11_uri(identity_key):
        if force:
            raise KeyFileError(
                "--force does not replace a key in an HSM: delete the object in the token "
                "with its own tools, then run init again"
            )
        try:
            signer, _ = ensure_ed25519(str(identity_key))
        except Pkcs11Error as exc:
            raise KeyFileError(str(exc)) from None
        return signer
    path = key_path(state_dir, identity_key)
    key = SigningKey.generate(os.urandom(32))
    data = (key.seed.hex() + "\n").encode()
    if force:
        atomic_write(path, data, mode=0o600)
        os.chmod(path, 0o600)
        return key
    try:
        create_private(path, data, what="device identity")
    except KeyFileError:
        raise KeyFileError(
            f"{path} already exists: refusing to replace the device identity "
            "(use --force to create a new device identity)"
        ) from None
    fsync_dir(path.parent)
    return key


def load_identity(
    state_dir: Path, identity_key: str | None = None
) -> SigningKey | Ed25519HsmSigner:
    if is_pkcs11_uri(identity_key):
        try:
            return Ed25519HsmSigner(str(identity_key))
        except Pkcs11Error as exc:
            raise KeyFileError(str(exc)) from None
    path = key_path(state_dir, identity_key)
    seed = read_hex_secret(
        path, 32, kind="Ed25519 seed", what="identity key", hint="run `aeamc-agent init`"
    )
    return SigningKey.from_seed(seed)
