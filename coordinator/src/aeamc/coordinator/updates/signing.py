"""TUF role keys: the project's Ed25519 keys (a hex seed file or a PKCS#11 token) as
securesystemslib signers.

One key format for every secret of the coordinator: a TUF role key is a file exactly like
the identity key (32-byte seed in hex, mode 0600) or a ``pkcs11:`` URI naming a key
generated in an HSM, where it never leaves the token (``CKM_EDDSA``). Ed25519 over the
canonical metadata bytes is what TUF's ``ed25519`` scheme verifies, so either signs
metadata any TUF client accepts.
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from securesystemslib.signer import Key, SecretsHandler, Signature, Signer, SSlibKey

from aeamc.shared.identity import Signer as RawSigner
from aeamc.shared.runtime.pkcs11 import Ed25519HsmSigner, Pkcs11Error, is_pkcs11_uri

from ..keys import KeyFileError, ensure_identity, load_identity

ROLES = ("root", "targets", "snapshot", "timestamp")
#: Roles whose keys belong offline (a keys folder on removable media, or an HSM).
OFFLINE_ROLES = ("root", "targets")


class RoleKeyError(Exception):
    """A role key cannot be found or used; the message says which and why."""


def public_key_of(raw: bytes) -> SSlibKey:
    return SSlibKey.from_crypto(Ed25519PublicKey.from_public_bytes(raw))


class Ed25519Signer(Signer):
    """A securesystemslib ``Signer`` over an AEAMC signer (key file or HSM token)."""

    def __init__(self, key: RawSigner) -> None:
        self._key = key
        self._public = public_key_of(key.public_key)

    @property
    def public_key(self) -> Key:
        return self._public

    @property
    def keyid(self) -> str:
        return self._public.keyid

    def sign(self, payload: bytes) -> Signature:
        return Signature(self._public.keyid, self._key.sign(payload).hex())

    @classmethod
    def from_priv_key_uri(
        cls,
        priv_key_uri: str,
        public_key: Key,
        secrets_handler: SecretsHandler | None = None,
    ) -> Ed25519Signer:
        """A ``pkcs11:`` URI's key, checked against the public key the metadata lists."""
        if not is_pkcs11_uri(priv_key_uri):
            raise ValueError(f"not a pkcs11: URI: {priv_key_uri}")
        try:
            signer = cls(Ed25519HsmSigner(priv_key_uri))
        except Pkcs11Error as exc:
            raise ValueError(str(exc)) from None
        if signer.keyid != public_key.keyid:
            raise ValueError("the token's key is not the one the metadata lists")
        return signer


def load_role_signer(ref: str | Path, *, create: bool = False) -> Ed25519Signer:
    """The signer a key file path or ``pkcs11:`` URI names (created if ``create``)."""
    try:
        key = ensure_identity(ref)[0] if create else load_identity(ref)
    except KeyFileError as exc:
        raise RoleKeyError(str(exc)) from None
    except OSError as exc:
        raise RoleKeyError(f"{ref}: {exc.strerror or exc}") from None
    return Ed25519Signer(key)


def keygen(keys_dir: Path, roles: tuple[str, ...] = OFFLINE_ROLES) -> dict[str, str]:
    """Create the offline role keys in ``keys_dir`` (never replacing one); their key ids."""
    keys_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    out = {}
    for role in roles:
        path = keys_dir / f"{role}.key"
        if path.exists():
            raise RoleKeyError(f"{path} exists; refusing to replace a {role} key")
    for role in roles:
        out[role] = load_role_signer(keys_dir / f"{role}.key", create=True).keyid
    return out
