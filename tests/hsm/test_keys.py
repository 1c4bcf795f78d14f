"""Keys in a real SoftHSM2 token: signatures the protocol accepts, keys that never leave."""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from eth_account import Account
from eth_account.typed_transactions import TypedTransaction
from eth_utils import keccak
from hexbytes import HexBytes

from aeamc.shared.identity import device_id_for
from aeamc.shared.messages import PoA, parse_signed, sign
from aeamc.shared.runtime.pkcs11 import (
    SECP256K1_N,
    Ed25519HsmSigner,
    Pkcs11Error,
    Pkcs11Uri,
    Secp256k1HsmSigner,
    ensure_ed25519,
    generate_ed25519,
    generate_secp256k1,
)

from .conftest import SoftHsm

Label = Callable[[str], str]


# --- URIs -------------------------------------------------------------------------------


def test_uri_parts_and_percent_decoding() -> None:
    uri = Pkcs11Uri.parse(
        "pkcs11:token=my%20token;object=dev;id=%01%02"
        "?module-path=/usr/lib/x.so&pin-source=file:///etc/aeamc/pin"
    )
    assert uri.token == "my token" and uri.object == "dev" and uri.id == b"\x01\x02"
    assert uri.module_path == "/usr/lib/x.so" and uri.pin_source == Path("/etc/aeamc/pin")
    secret = Pkcs11Uri.parse("pkcs11:object=k?module-path=/x.so&pin-value=1234")
    assert secret.read_pin() == "1234" and "1234" not in secret.redacted


@pytest.mark.parametrize(
    ("text", "part"),
    [
        ("pkcs11:token=t;object=k", "module-path"),
        ("pkcs11:token=t?module-path=/x.so", "object="),
        ("pkcs11:token=t;colour=red;object=k?module-path=/x.so", "'colour'"),
        ("pkcs11:object=k;object=j?module-path=/x.so", "'object' given twice"),
        ("pkcs11:object=k?module-path=/x.so&pin=1", "'pin'"),
        ("pkcs11:object?module-path=/x.so", "'object' has no '='"),
        ("pkcs11:object=k?module-path=/x.so&pin-source=relative/pin", "absolute"),
        ("pkcs11:object=k?module-path=/x.so&pin-source=file://host/pin", "local"),
        ("pkcs11:object=k?module-path=/x.so&pin-source=/p&pin-value=1", "not both"),
        ("pkcs11:object=k;type=secret-key?module-path=/x.so", "type"),
    ],
)
def test_bad_uris_name_the_bad_part(text: str, part: str) -> None:
    with pytest.raises(Pkcs11Error, match=part):
        Pkcs11Uri.parse(text)


def test_pin_source_readable_by_others_is_refused(softhsm: SoftHsm, tmp_path: Path) -> None:
    pin = tmp_path / "pin"
    pin.write_text("4321\n")
    os.chmod(pin, 0o644)
    uri = Pkcs11Uri.parse(f"pkcs11:object=k?module-path={softhsm.module}&pin-source=file://{pin}")
    with pytest.raises(Pkcs11Error, match="chmod 600"):
        uri.read_pin()
    os.chmod(pin, 0o600)
    assert uri.read_pin() == "4321"


def test_wrong_pin_and_missing_things_are_clear(softhsm: SoftHsm, label: Label) -> None:
    with pytest.raises(Pkcs11Error, match="no such key"):
        Ed25519HsmSigner(softhsm.uri(label("absent")))
    with pytest.raises(Pkcs11Error, match="no token matches"):
        Ed25519HsmSigner(softhsm.uri("k").replace("token=aeamc", "token=other"))
    with pytest.raises(Pkcs11Error, match="module-path"):
        Ed25519HsmSigner(softhsm.uri("k").replace(softhsm.module, "/nonexistent/lib.so"))


# --- Ed25519 --------------------------------------------------------------------------------


def test_ed25519_signatures_verify_and_the_protocol_accepts_them(
    softhsm: SoftHsm, label: Label, vectors: dict[str, Any]
) -> None:
    signer = generate_ed25519(softhsm.uri(label("device")))
    assert len(signer.public_key) == 32
    data = b"any bytes at all"
    nacl.signing.VerifyKey(signer.public_key).verify(data, signer.sign(data))

    # A PoA signed in the HSM is one the core parses and verifies.
    body = copy.deepcopy(vectors["poa"]["signed"])
    body.pop("signature")
    body["device_id"] = device_id_for(signer.public_key)
    poa = sign(PoA, body, signer)
    parsed = parse_signed(poa.to_dict(), PoA)
    parsed.verify(signer.public_key, signer_id=body["device_id"])


def test_ensure_keeps_an_existing_key_and_generate_refuses_to_replace(
    softhsm: SoftHsm, label: Label
) -> None:
    uri = softhsm.uri(label("coord"), pin="value")
    first, created = ensure_ed25519(uri)
    again, created_again = ensure_ed25519(uri)
    assert created and not created_again and again.public_key == first.public_key
    with pytest.raises(Pkcs11Error, match="already exists"):
        generate_ed25519(uri)


def _assert_never_leaves(private: Any) -> None:
    import pkcs11
    from pkcs11 import Attribute

    assert private[Attribute.SENSITIVE] is True
    assert private[Attribute.EXTRACTABLE] is False
    assert private[Attribute.NEVER_EXTRACTABLE] is True
    assert private[Attribute.TOKEN] is True
    with pytest.raises(pkcs11.AttributeSensitive):
        private[Attribute.VALUE]


def test_keys_are_sensitive_and_not_extractable(softhsm: SoftHsm, label: Label) -> None:
    _assert_never_leaves(generate_ed25519(softhsm.uri(label("device")))._private)
    _assert_never_leaves(generate_secp256k1(softhsm.uri(label("wallet")))._private)


# --- secp256k1 ----------------------------------------------------------------------------------


def test_ethereum_transactions_recover_to_the_hsm_address(softhsm: SoftHsm, label: Label) -> None:
    wallet = generate_secp256k1(softhsm.uri(label("wallet")))
    assert Secp256k1HsmSigner(wallet.uri).address == wallet.address
    raw_s: list[int] = []

    class Recording:  # the token's own signatures, before low-s normalisation
        def __init__(self, key: Any) -> None:
            self.key = key

        def sign(self, data: bytes, **kwargs: Any) -> bytes:
            out = bytes(self.key.sign(data, **kwargs))
            raw_s.append(int.from_bytes(out[32:], "big"))
            return out

    wallet._private = Recording(wallet._private)
    parities = set()
    for nonce in range(24):  # enough to meet both recovery ids and a high s
        tx = {
            "type": 2,
            "chainId": 31337,
            "nonce": nonce,
            "maxFeePerGas": 2_000_000_000,
            "maxPriorityFeePerGas": 1_000_000_000,
            "gas": 100_000,
            "to": "0x" + "11" * 20,
            "value": 0,
            "data": "0x" + "ab" * (nonce + 1),
        }
        signed = wallet.sign_transaction(tx)
        assert Account.recover_transaction(signed.raw) == wallet.address
        v, _, s = TypedTransaction.from_bytes(HexBytes(signed.raw)).vrs()
        assert 0 < s <= SECP256K1_N // 2
        parities.add(v)
        assert signed.tx_hash == "0x" + keccak(signed.raw).hex()
    assert parities == {0, 1}
    assert any(s > SECP256K1_N // 2 for s in raw_s), "no high s to normalise in 24 signatures"


def test_hsm_wallet_matches_the_file_wallet_interface(softhsm: SoftHsm, label: Label) -> None:
    from aeamc.coordinator.anchoring.wallet import SignedTx, ensure_wallet, load_wallet

    uri = softhsm.uri(label("wallet"))
    wallet, created = ensure_wallet(uri)
    assert created and load_wallet(uri).address == wallet.address
    tx = {
        "type": 2,
        "chainId": 1,
        "nonce": 0,
        "maxFeePerGas": 10,
        "maxPriorityFeePerGas": 1,
        "gas": 21_000,
        "to": "0x" + "22" * 20,
        "value": 1,
        "data": b"",
    }
    signed = wallet.sign_transaction(tx)
    assert isinstance(signed, SignedTx)
    assert Account.recover_transaction(signed.raw) == wallet.address


# --- configuration -------------------------------------------------------------------------


def test_config_accepts_a_path_or_a_uri_and_names_a_bad_uri(tmp_path: Path) -> None:
    from aeamc.agent.config import ConfigError as AgentConfigError
    from aeamc.agent.config import config_from_mapping
    from aeamc.coordinator.config import ConfigError, parse_config

    uri = "pkcs11:token=aeamc;object=dev?module-path=/x.so&pin-value=1"
    assert config_from_mapping({"identity_key": uri}).identity_key == uri
    with pytest.raises(AgentConfigError, match=r"identity_key: .*module-path"):
        config_from_mapping({"identity_key": "pkcs11:object=dev"})

    c = parse_config(
        {"state_dir": str(tmp_path), "identity_key": uri, "chain": {"wallet_key": uri}}
    )
    assert c.key_ref == uri and c.wallet_ref == uri
    files = parse_config({"state_dir": str(tmp_path), "chain": {"wallet_key": "w.key"}})
    assert files.key_ref == tmp_path / "identity.key" and files.wallet_ref == tmp_path / "w.key"
    with pytest.raises(ConfigError, match=r"chain.wallet_key: .*'colour'"):
        parse_config({"chain": {"wallet_key": "pkcs11:colour=red?module-path=/x.so"}})
    with pytest.raises(ConfigError, match="not both"):
        parse_config({"chain": {"wallet_key": "a", "wallet_key_file": "b"}})


def test_ca_key_in_the_hsm_signs_certificates_that_verify(
    softhsm: SoftHsm, label: Label, tmp_path: Path
) -> None:
    """The coordinator's CA with its P-256 key in the token: the self-signed CA certificate
    and a device certificate verify (also with openssl), and the key never leaves."""
    import subprocess

    from cryptography.hazmat.primitives.serialization import Encoding

    from aeamc.coordinator.ca import CertificateAuthority
    from aeamc.shared.runtime import tls
    from aeamc.shared.runtime.pkcs11 import P256HsmSigner

    uri = softhsm.uri(label("ca"))
    ca, created = CertificateAuthority.ensure(tmp_path, uri, "ab" * 16)
    assert created
    again, created = CertificateAuthority.ensure(tmp_path, uri, "ab" * 16)
    assert not created and again.fingerprint == ca.fingerprint
    assert not (tmp_path / "ca" / "ca.key").exists()  # nothing of the key on disk
    assert tls.issued_by(ca.cert, ca.cert)
    device_key = tls.generate_key()
    cert = ca.issue_device(tls.make_csr(device_key, "cd" * 16), "cd" * 16, 3600)
    assert tls.issued_by(cert, ca.cert) and cert.public_key() == device_key.public_key()
    leaf = tmp_path / "leaf.pem"
    leaf.write_text(cert.public_bytes(Encoding.PEM).decode())
    ca_file = CertificateAuthority.cert_path(tmp_path)
    verified = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca_file), str(leaf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    _assert_never_leaves(P256HsmSigner(uri)._private)
    # A token key of another curve is refused with a clear message.
    ed = softhsm.uri(label("not-p256"))
    generate_ed25519(ed)
    with pytest.raises(Exception, match="not a P-256 key"):
        P256HsmSigner(ed)
