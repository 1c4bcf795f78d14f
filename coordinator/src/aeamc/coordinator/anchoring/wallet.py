"""The anchoring wallet: who signs ``anchor(root)`` transactions.

The service only needs an address and ``sign_transaction``, so a key that never leaves an
HSM (PKCS#11) can replace the key file without touching anything else. The default is a
file holding the secp256k1 private key in hex, mode 0600; a file readable by others is
refused, because whoever holds the key can spend the wallet and anchor in our name.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from aeamc.shared.runtime.keyfile import KeyFileError, create_private, read_hex_secret

#: Order of the secp256k1 group: a private key is an integer in [1, N-1].
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


class WalletError(Exception):
    """The wallet key cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class SignedTx:
    raw: bytes
    #: 0x-prefixed lowercase hex; known before the transaction reaches any node.
    tx_hash: str


class TxSigner(Protocol):
    """What the anchoring service needs from a key."""

    @property
    def address(self) -> str:
        """Checksummed address of the key."""
        ...

    def sign_transaction(self, tx: Mapping[str, Any]) -> SignedTx:
        """Sign a complete EIP-1559 transaction dict (chainId, nonce, fees, gas, to, data)."""
        ...


class FileWallet:
    """A private key loaded from a key file, signing with eth-account."""

    def __init__(self, private_key: bytes) -> None:
        from eth_account import Account

        self._account = Account.from_key(private_key)

    @property
    def address(self) -> str:
        """Checksummed address of the key."""
        return str(self._account.address)

    def sign_transaction(self, tx: Mapping[str, Any]) -> SignedTx:
        """Sign a complete EIP-1559 transaction dict; the hash is known before sending."""
        signed = self._account.sign_transaction(dict(tx))
        return SignedTx(bytes(signed.raw_transaction), "0x" + bytes(signed.hash).hex())


def _check_key(key: bytes, path: Path) -> bytes:
    if len(key) != 32 or not 0 < int.from_bytes(key, "big") < _SECP256K1_N:
        raise WalletError(f"{path}: not a secp256k1 private key (32 bytes, hex)")
    return key


def read_key_file(path: Path) -> bytes:
    """The private key in ``path``, refusing a file others can read (stdlib only)."""
    hint = "`aeamc-coordinator init` or `chain deploy` creates one"
    try:
        key = read_hex_secret(path, 32, kind="secp256k1 private key", what="wallet key", hint=hint)
    except KeyFileError as exc:
        raise WalletError(str(exc)) from None
    return _check_key(key, path)


def create_key_file(path: Path) -> bytes:
    """Write a new random key (stdlib only, so ``init`` stays fast); never overwrites."""
    while True:
        key = secrets.token_bytes(32)
        if 0 < int.from_bytes(key, "big") < _SECP256K1_N:
            break
    try:
        create_private(path, (key.hex() + "\n").encode(), what="wallet key")
    except KeyFileError as exc:
        raise WalletError(str(exc)) from None
    return key


def ensure_key_file(path: Path) -> bool:
    """Create the key file if missing, else check it; True if it was created."""
    if path.exists():
        read_key_file(path)
        return False
    create_key_file(path)
    return True


def create_wallet_file(path: Path) -> FileWallet:
    """A new wallet whose key is written to ``path``; never overwrites a file."""
    return FileWallet(create_key_file(path))


def load_wallet_file(path: Path) -> FileWallet:
    """The wallet whose key is in ``path``, refusing a file others can read."""
    return FileWallet(read_key_file(path))


def ensure_wallet_file(path: Path) -> tuple[FileWallet, bool]:
    """The wallet at ``path``, created if missing; the flag says whether it was created."""
    created = ensure_key_file(path)
    return load_wallet_file(path), created


class HsmWallet:
    """A secp256k1 key in a PKCS#11 token (RFC 7512 URI); it never leaves the token."""

    def __init__(self, signer: Any) -> None:
        self._signer = signer

    @property
    def address(self) -> str:
        """Checksummed address of the key in the token."""
        return str(self._signer.address)

    def sign_transaction(self, tx: Mapping[str, Any]) -> SignedTx:
        """Sign a complete EIP-1559 transaction dict inside the token."""
        signed = self._signer.sign_transaction(tx)
        return SignedTx(signed.raw, signed.tx_hash)


def _hsm(ref: str, create: bool) -> tuple[HsmWallet, bool]:
    from aeamc.shared.runtime.pkcs11 import Pkcs11Error, Secp256k1HsmSigner, ensure_secp256k1

    try:
        if create:
            signer, created = ensure_secp256k1(ref)
            return HsmWallet(signer), created
        return HsmWallet(Secp256k1HsmSigner(ref)), False
    except Pkcs11Error as exc:
        raise WalletError(str(exc)) from None


def load_wallet(ref: str | Path) -> TxSigner:
    """The wallet a ``pkcs11:`` URI or a key file path names."""
    if _is_uri(ref):
        return _hsm(str(ref), create=False)[0]
    return load_wallet_file(Path(ref))


def ensure_wallet(ref: str | Path) -> tuple[TxSigner, bool]:
    """The wallet, created if missing (in the token for a URI); flag: whether created."""
    if _is_uri(ref):
        return _hsm(str(ref), create=True)
    return ensure_wallet_file(Path(ref))


def ensure_key(ref: str | Path) -> bool:
    """Like ``ensure_key_file``, for a path or a ``pkcs11:`` URI; True if created."""
    if _is_uri(ref):
        return _hsm(str(ref), create=True)[1]
    return ensure_key_file(Path(ref))


def _is_uri(ref: str | Path) -> bool:
    return isinstance(ref, str) and ref[:7].lower() == "pkcs11:"
