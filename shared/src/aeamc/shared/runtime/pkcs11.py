"""Private keys in an HSM through PKCS#11, named by RFC 7512 URIs (SPEC §11).

``pkcs11:token=aeamc;object=device?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:///etc/aeamc/pin``

The private key never leaves the token: it is generated there as SENSITIVE and not
EXTRACTABLE, and every signature is computed by the token (``CKM_EDDSA`` for the Ed25519
identities, ``CKM_ECDSA`` for the secp256k1 anchoring wallet and the P-256 CA key).
python-pkcs11 is imported only when a URI is used, so file keys need no native library.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar
from urllib.parse import unquote, unquote_to_bytes, urlsplit

from .keyfile import KeyFileError, read_private

SCHEME = "pkcs11:"

#: DER of the curve OIDs put in CKA_EC_PARAMS: id-Ed25519 (RFC 8410), secp256k1 (SEC 2)
#: and P-256 (prime256v1, the coordinator's CA).
ED25519_PARAMS = bytes.fromhex("06032b6570")
SECP256K1_PARAMS = bytes.fromhex("06052b8104000a")
P256_PARAMS = bytes.fromhex("06082a8648ce3d030107")
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

_PATH_ATTRS = {"token", "serial", "object", "id", "type"}
_QUERY_ATTRS = {"module-path", "pin-source", "pin-value"}


class Pkcs11Error(Exception):
    """The URI, the PIN, the token or the key cannot be used; the message says which."""


def is_pkcs11_uri(value: str | os.PathLike[str] | None) -> bool:
    return isinstance(value, str) and value[: len(SCHEME)].lower() == SCHEME


@dataclass(frozen=True)
class Pkcs11Uri:
    """The parts of an RFC 7512 URI this code uses (a key is found by label and/or id)."""

    module_path: str
    token: str | None = None
    serial: str | None = None
    object: str | None = None
    id: bytes | None = None
    pin_source: Path | None = None
    pin_value: str | None = field(default=None, repr=False)
    text: str = field(default="", repr=False)

    @classmethod
    def parse(cls, text: str) -> Pkcs11Uri:
        if not is_pkcs11_uri(text):
            raise Pkcs11Error(f"{text!r}: not a pkcs11: URI")
        body = text[len(SCHEME) :]
        path, _, query = body.partition("?")
        attrs: dict[str, Any] = {}
        for part in filter(None, path.split(";")):
            name, eq, value = part.partition("=")
            if not eq:
                raise Pkcs11Error(f"pkcs11 URI: path attribute {part!r} has no '='")
            if name not in _PATH_ATTRS:
                raise Pkcs11Error(
                    f"pkcs11 URI: unsupported path attribute {name!r} "
                    f"(supported: {', '.join(sorted(_PATH_ATTRS))})"
                )
            if name in attrs:
                raise Pkcs11Error(f"pkcs11 URI: path attribute {name!r} given twice")
            attrs[name] = unquote_to_bytes(value) if name == "id" else unquote(value)
        for part in filter(None, query.split("&")):
            name, eq, value = part.partition("=")
            if not eq:
                raise Pkcs11Error(f"pkcs11 URI: query attribute {part!r} has no '='")
            if name not in _QUERY_ATTRS:
                raise Pkcs11Error(
                    f"pkcs11 URI: unsupported query attribute {name!r} "
                    f"(supported: {', '.join(sorted(_QUERY_ATTRS))})"
                )
            if name in attrs:
                raise Pkcs11Error(f"pkcs11 URI: query attribute {name!r} given twice")
            attrs[name] = unquote(value)
        if attrs.get("type", "private") not in ("private", "public"):
            raise Pkcs11Error("pkcs11 URI: type must be 'private' (or 'public')")
        if not attrs.get("module-path"):
            raise Pkcs11Error("pkcs11 URI: module-path is required (the PKCS#11 .so to load)")
        if not attrs.get("object") and not attrs.get("id"):
            raise Pkcs11Error("pkcs11 URI: name the key with object=<label> and/or id=<%XX bytes>")
        if "pin-source" in attrs and "pin-value" in attrs:
            raise Pkcs11Error("pkcs11 URI: give pin-source or pin-value, not both")
        pin_source = None
        if "pin-source" in attrs:
            pin_source = _pin_path(attrs["pin-source"])
        return cls(
            module_path=attrs["module-path"],
            token=attrs.get("token"),
            serial=attrs.get("serial"),
            object=attrs.get("object"),
            id=attrs.get("id"),
            pin_source=pin_source,
            pin_value=attrs.get("pin-value"),
            text=text,
        )

    def read_pin(self) -> str | None:
        """The user PIN; a pin-source file readable by group or others is refused."""
        if self.pin_value is not None:
            return self.pin_value
        if self.pin_source is None:
            return None
        try:
            data = read_private(Path(self.pin_source), what="PIN")
        except KeyFileError as exc:
            raise Pkcs11Error(f"pkcs11 URI: pin-source: {exc}") from None
        return data.decode("utf-8").rstrip("\r\n")

    @property
    def redacted(self) -> str:
        """The URI for messages and logs, without a pin-value."""
        if self.pin_value is None:
            return self.text
        return self.text.replace(f"pin-value={self.pin_value}", "pin-value=***")


def _pin_path(value: str) -> Path:
    if value.startswith("file:"):
        parts = urlsplit(value)
        if parts.netloc not in ("", "localhost"):
            raise Pkcs11Error(f"pkcs11 URI: pin-source {value!r} must be a local file:// URI")
        path = Path(unquote(parts.path))
    else:
        path = Path(value)
    if not path.is_absolute():
        raise Pkcs11Error(f"pkcs11 URI: pin-source {value!r} must be an absolute path")
    return path


# --- token access ------------------------------------------------------------------------

_LIBS: dict[str, Any] = {}
_LIBS_LOCK = threading.Lock()


def _lib(module_path: str) -> Any:
    import pkcs11

    with _LIBS_LOCK:
        if module_path not in _LIBS:
            if not Path(module_path).exists():
                raise Pkcs11Error(f"pkcs11 URI: module-path {module_path}: no such file")
            try:
                _LIBS[module_path] = pkcs11.lib(module_path)
            except Exception as exc:
                raise Pkcs11Error(
                    f"pkcs11 URI: cannot load module-path {module_path}: {exc}"
                ) from None
        return _LIBS[module_path]


def open_session(uri: Pkcs11Uri, *, rw: bool = False) -> Any:
    """A logged-in session on the token the URI names."""
    import pkcs11

    lib = _lib(uri.module_path)
    kwargs: dict[str, Any] = {}
    if uri.token is not None:
        kwargs["token_label"] = uri.token
    if uri.serial is not None:
        kwargs["token_serial"] = uri.serial.encode()
    try:
        token = lib.get_token(**kwargs)
    except pkcs11.NoSuchToken:
        raise Pkcs11Error(
            f"pkcs11 URI: no token matches token={uri.token!r} in {uri.module_path}"
        ) from None
    except pkcs11.MultipleTokensReturned:
        raise Pkcs11Error("pkcs11 URI: several tokens match; add token=<label>") from None
    pin = uri.read_pin()
    try:
        return token.open(rw=rw, user_pin=pin)
    except pkcs11.UserAlreadyLoggedIn:
        # Login is per process and token: another open session already holds it.
        return token.open(rw=rw)
    except pkcs11.PinIncorrect:
        raise Pkcs11Error(f"pkcs11 URI: token {token.label!r} refused the PIN") from None
    except pkcs11.PKCS11Error as exc:
        raise Pkcs11Error(f"pkcs11: cannot open token {token.label!r}: {exc!r}") from None


def _find(session: Any, uri: Pkcs11Uri, object_class: Any) -> Any | None:
    from pkcs11 import Attribute

    template: dict[Any, Any] = {Attribute.CLASS: object_class}
    if uri.object is not None:
        template[Attribute.LABEL] = uri.object
    if uri.id is not None:
        template[Attribute.ID] = uri.id
    found = list(session.get_objects(template))
    if len(found) > 1:
        raise Pkcs11Error(f"pkcs11 URI: {len(found)} keys match; make object/id unique")
    return found[0] if found else None


def _find_pair(session: Any, uri: Pkcs11Uri) -> tuple[Any, Any] | None:
    from pkcs11 import ObjectClass

    private = _find(session, uri, ObjectClass.PRIVATE_KEY)
    if private is None:
        return None
    public = _find(session, uri, ObjectClass.PUBLIC_KEY)
    if public is None:
        raise Pkcs11Error(
            f"pkcs11: {uri.redacted}: the private key has no matching public key object"
        )
    return private, public


def _ec_point(public: Any) -> bytes:
    """CKA_EC_POINT without its DER OCTET STRING wrapper (tokens differ on wrapping)."""
    from pkcs11 import Attribute

    point = bytes(public[Attribute.EC_POINT])
    if point[:1] == b"\x04":
        length = point[1]
        if length < 0x80 and len(point) == 2 + length:
            return point[2:]
        if length == 0x81 and len(point) == 3 + point[2]:
            return point[3:]
    return point


def key_exists(uri: str | Pkcs11Uri) -> bool:
    parsed = uri if isinstance(uri, Pkcs11Uri) else Pkcs11Uri.parse(uri)
    session = open_session(parsed)
    try:
        return _find_pair(session, parsed) is not None
    finally:
        session.close()


def _generate(uri: Pkcs11Uri, key_type: Any, params: bytes, mechanism: Any) -> None:
    import pkcs11
    from pkcs11 import Attribute, KeyType

    session = open_session(uri, rw=True)
    try:
        if _find_pair(session, uri) is not None:
            raise Pkcs11Error(f"pkcs11: {uri.redacted}: a key already exists; not replacing it")
        domain = session.create_domain_parameters(
            KeyType.EC, {Attribute.EC_PARAMS: params}, local=True
        )
        domain.key_type = key_type
        common: dict[Any, Any] = {Attribute.TOKEN: True}
        if uri.object is not None:
            common[Attribute.LABEL] = uri.object
        if uri.id is not None:
            common[Attribute.ID] = uri.id
        private_template = {
            **common,
            Attribute.PRIVATE: True,
            Attribute.SENSITIVE: True,
            Attribute.EXTRACTABLE: False,
            Attribute.SIGN: True,
        }
        public_template = {**common, Attribute.VERIFY: True}
        try:
            domain.generate_keypair(
                store=True,
                mechanism=mechanism,
                public_template=public_template,
                private_template=private_template,
            )
        except pkcs11.PKCS11Error as exc:
            raise Pkcs11Error(f"pkcs11: {uri.redacted}: key generation failed: {exc!r}") from None
    finally:
        session.close()


K = TypeVar("K", bound="_TokenKey")


class _TokenKey:
    """A key pair found in a token by its URI, with one session kept open for signing.

    The three kinds of key below differ only in their type check and in how they sign;
    finding the pair and closing the session on any refusal is the same for all.
    """

    def __init__(self, uri: str | Pkcs11Uri, key_type: Any, not_this_kind: str) -> None:
        self.uri = uri if isinstance(uri, Pkcs11Uri) else Pkcs11Uri.parse(uri)
        self._lock = threading.Lock()
        self._session = open_session(self.uri)
        pair = _find_pair(self._session, self.uri)
        if pair is None:
            self._session.close()
            raise Pkcs11Error(
                f"pkcs11: {self.uri.redacted}: no such key (`init` generates it in the token)"
            )
        self._private, public = pair
        self._point = _ec_point(public)
        if self._private.key_type != key_type:
            self._refuse(not_this_kind)

    def close(self) -> None:
        """Close the key's session; the key stays in the token."""
        self._session.close()

    def _refuse(self, what: str) -> NoReturn:
        self._session.close()
        raise Pkcs11Error(f"pkcs11: {self.uri.redacted}: {what}")


# --- Ed25519 (device and coordinator identities) ------------------------------------------


class Ed25519HsmSigner(_TokenKey):
    """The core's ``Signer`` (``public_key`` + ``sign``) backed by CKM_EDDSA in a token."""

    def __init__(self, uri: str | Pkcs11Uri) -> None:
        from pkcs11 import KeyType

        super().__init__(uri, KeyType.EC_EDWARDS, "not an Ed25519 key")
        self._public_key = self._point
        if len(self._public_key) != 32:
            self._refuse("not an Ed25519 public key")

    @property
    def public_key(self) -> bytes:
        return self._public_key

    @property
    def device_id(self) -> str:
        from aeamc.shared.identity import device_id_for

        return device_id_for(self._public_key)

    def sign(self, data: bytes) -> bytes:
        from pkcs11 import Mechanism

        with self._lock:
            return bytes(self._private.sign(data, mechanism=Mechanism.EDDSA))


def generate_ed25519(uri: str | Pkcs11Uri) -> Ed25519HsmSigner:
    """Create a non-extractable, sensitive Ed25519 key pair on the token; never replaces."""
    from pkcs11 import KeyType, Mechanism

    parsed = uri if isinstance(uri, Pkcs11Uri) else Pkcs11Uri.parse(uri)
    _generate(parsed, KeyType.EC_EDWARDS, ED25519_PARAMS, Mechanism.EC_EDWARDS_KEY_PAIR_GEN)
    return Ed25519HsmSigner(parsed)


def ensure_ed25519(uri: str | Pkcs11Uri) -> tuple[Ed25519HsmSigner, bool]:
    """The key the URI names, generated in the token if missing; flag: whether created."""
    return _ensure(uri, Ed25519HsmSigner, generate_ed25519)


# --- secp256k1 (the anchoring wallet) -----------------------------------------------------


@dataclass(frozen=True)
class SignedTransaction:
    raw: bytes
    #: 0x-prefixed lowercase hex keccak of ``raw``.
    tx_hash: str


class Secp256k1HsmSigner(_TokenKey):
    """An Ethereum account whose key is in a token: ``address`` + ``sign_transaction``.

    The token signs the keccak-256 signing hash with raw CKM_ECDSA (``r || s``). Ethereum
    accepts only s ≤ n/2 (EIP-2), so a high s is replaced by n − s, and the recovery id
    the token does not report is found by trying both and keeping the one that recovers
    our public key.
    """

    def __init__(self, uri: str | Pkcs11Uri) -> None:
        from eth_keys import keys
        from pkcs11 import KeyType

        super().__init__(uri, KeyType.EC, "not a secp256k1 key")
        point = self._point
        if len(point) != 65 or point[0] != 4:
            self._refuse("not a secp256k1 key")
        self._public = keys.PublicKey(point[1:])
        self._address = self._public.to_checksum_address()

    @property
    def address(self) -> str:
        return str(self._address)

    @property
    def public_key(self) -> bytes:
        """Uncompressed public key without the 0x04 prefix (64 bytes)."""
        return self._public.to_bytes()

    def sign_hash(self, msg_hash: bytes) -> tuple[int, int, int]:
        """(y-parity, r, s) with low s, over a 32-byte hash."""
        from eth_keys import keys
        from pkcs11 import Mechanism

        if len(msg_hash) != 32:
            raise ValueError("a message hash is 32 bytes")
        with self._lock:
            raw = bytes(self._private.sign(msg_hash, mechanism=Mechanism.ECDSA))
        r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
        if s > SECP256K1_N // 2:
            s = SECP256K1_N - s
        for parity in (0, 1):
            candidate = keys.Signature(vrs=(parity, r, s))
            try:
                if candidate.recover_public_key_from_msg_hash(msg_hash) == self._public:
                    return parity, r, s
            except Exception:  # noqa: S112 - an invalid candidate; try the other
                continue
        raise Pkcs11Error(f"pkcs11: {self.uri.redacted}: signature does not recover our key")

    def sign_transaction(self, tx: Mapping[str, Any]) -> SignedTransaction:
        """Sign a complete transaction dict exactly as eth-account would with the key."""
        from eth_account._utils.signing import (
            TypedTransaction,
            encode_transaction,
            serializable_unsigned_transaction_from_dict,
            to_eth_v,
        )
        from eth_utils import keccak

        unsigned = serializable_unsigned_transaction_from_dict(dict(tx))
        parity, r, s = self.sign_hash(unsigned.hash())
        if isinstance(unsigned, TypedTransaction):
            v = parity
        else:
            v = to_eth_v(parity, tx.get("chainId"))
        raw = bytes(encode_transaction(unsigned, vrs=(v, r, s)))
        return SignedTransaction(raw, "0x" + keccak(raw).hex())


def generate_secp256k1(uri: str | Pkcs11Uri) -> Secp256k1HsmSigner:
    """Create a non-extractable, sensitive secp256k1 key pair on the token; never replaces."""
    from pkcs11 import KeyType, Mechanism

    parsed = uri if isinstance(uri, Pkcs11Uri) else Pkcs11Uri.parse(uri)
    _generate(parsed, KeyType.EC, SECP256K1_PARAMS, Mechanism.EC_KEY_PAIR_GEN)
    return Secp256k1HsmSigner(parsed)


def ensure_secp256k1(uri: str | Pkcs11Uri) -> tuple[Secp256k1HsmSigner, bool]:
    """The key the URI names, generated in the token if missing; flag: whether created."""
    return _ensure(uri, Secp256k1HsmSigner, generate_secp256k1)


# --- P-256 (the coordinator's certificate authority) ----------------------------------------


class P256HsmSigner(_TokenKey):
    """An ECDSA P-256 key in a token, signing SHA-256 digests with raw CKM_ECDSA.

    ``sign`` returns the DER ``ECDSA-Sig-Value`` X.509 wants; the token only ever sees the
    32-byte digest, hashed here, so it needs no CKM_ECDSA_SHA256 support.
    """

    def __init__(self, uri: str | Pkcs11Uri) -> None:
        from cryptography.hazmat.primitives.asymmetric import ec
        from pkcs11 import KeyType

        super().__init__(uri, KeyType.EC, "not a P-256 key")
        try:
            self.public_key = ec.EllipticCurvePublicKey.from_encoded_point(
                ec.SECP256R1(), self._point
            )
        except ValueError:
            self._refuse("not a P-256 key")

    def sign(self, data: bytes) -> bytes:
        """DER ECDSA signature of SHA-256(``data``), computed by the token."""
        import hashlib

        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
        from pkcs11 import Mechanism

        digest = hashlib.sha256(data).digest()
        with self._lock:
            raw = bytes(self._private.sign(digest, mechanism=Mechanism.ECDSA))
        half = len(raw) // 2
        return encode_dss_signature(
            int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
        )


def ensure_p256(uri: str | Pkcs11Uri) -> tuple[P256HsmSigner, bool]:
    """The P-256 key the URI names, generated in the token if missing; flag: created."""
    from pkcs11 import KeyType, Mechanism

    def generate(parsed: Pkcs11Uri) -> P256HsmSigner:
        _generate(parsed, KeyType.EC, P256_PARAMS, Mechanism.EC_KEY_PAIR_GEN)
        return P256HsmSigner(parsed)

    return _ensure(uri, P256HsmSigner, generate)


def _ensure(
    uri: str | Pkcs11Uri, signer: Callable[[Pkcs11Uri], K], generate: Callable[[Pkcs11Uri], K]
) -> tuple[K, bool]:
    """``signer`` of the key the URI names, else ``generate`` it; flag: whether created."""
    parsed = uri if isinstance(uri, Pkcs11Uri) else Pkcs11Uri.parse(uri)
    if key_exists(parsed):
        return signer(parsed), False
    return generate(parsed), True
