"""Ed25519 identities and message signatures (SPEC §1).

A ``Signer`` is anything that can produce an Ed25519 signature over bytes: a key held in
memory here, or a key that never leaves an HSM (the shells provide that one). The core
only ever needs ``public_key`` and ``sign``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import nacl.exceptions
import nacl.signing

from .canonical import signing_input
from .errors import SignatureError, ValidationError

PUBLIC_KEY_HEX_LEN = 64
DEVICE_ID_HEX_LEN = 32
SIGNATURE_HEX_LEN = 128


class Signer(Protocol):
    @property
    def public_key(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


def device_id_for(public_key: bytes) -> str:
    """First 16 bytes of SHA-256(public key), hex: short, yet anyone can check the binding."""
    if len(public_key) != 32:
        raise ValidationError("public_key", "an Ed25519 public key is 32 bytes")
    return hashlib.sha256(public_key).digest()[:16].hex()


@dataclass(frozen=True)
class SigningKey:
    """An Ed25519 key held in process memory (the default, file-backed keystore)."""

    _key: nacl.signing.SigningKey

    @classmethod
    def from_seed(cls, seed: bytes) -> SigningKey:
        if len(seed) != 32:
            raise ValidationError("seed", "an Ed25519 seed is 32 bytes")
        return cls(nacl.signing.SigningKey(seed))

    @classmethod
    def generate(cls, random_bytes: bytes) -> SigningKey:
        """Key from caller-supplied entropy, so the core never reads the OS RNG itself."""
        return cls.from_seed(random_bytes)

    @property
    def seed(self) -> bytes:
        return bytes(self._key)

    @property
    def public_key(self) -> bytes:
        return bytes(self._key.verify_key)

    @property
    def device_id(self) -> str:
        return device_id_for(self.public_key)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data).signature


def sign_message(message: Mapping[str, Any], signer: Signer) -> dict[str, Any]:
    """Return a copy of ``message`` with its ``signature`` member set."""
    body = {k: v for k, v in message.items() if k != "signature"}
    signature = signer.sign(signing_input(body))
    return {**body, "signature": signature.hex()}


def verify_signature(message: Mapping[str, Any], public_key: bytes) -> None:
    """Raise ``SignatureError`` unless ``message['signature']`` verifies under the key."""
    verify_raw(public_key, signing_input(message), signature_bytes(message))


def signature_bytes(message: Mapping[str, Any]) -> bytes:
    """``message['signature']`` as 64 bytes, or ``SignatureError`` if it is not one."""
    sig_hex = message.get("signature")
    if not isinstance(sig_hex, str) or len(sig_hex) != SIGNATURE_HEX_LEN:
        raise SignatureError("signature must be 128 lowercase hex characters")
    try:
        return bytes.fromhex(sig_hex)
    except ValueError:
        raise SignatureError("signature is not hex") from None


def verify_raw(public_key: bytes, data: bytes, signature: bytes) -> None:
    try:
        nacl.signing.VerifyKey(public_key).verify(data, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        raise SignatureError("signature does not verify") from None


def check_key_matches_id(public_key: bytes, device_id: str) -> None:
    if device_id_for(public_key) != device_id:
        raise SignatureError("public key does not match the claimed id")


def parse_public_key(hex_key: str, field: str = "public_key") -> bytes:
    if (
        not isinstance(hex_key, str)
        or len(hex_key) != PUBLIC_KEY_HEX_LEN
        or hex_key != hex_key.lower()
    ):
        raise ValidationError(field, "must be 64 lowercase hex characters")
    try:
        return bytes.fromhex(hex_key)
    except ValueError:
        raise ValidationError(field, "must be 64 lowercase hex characters") from None
