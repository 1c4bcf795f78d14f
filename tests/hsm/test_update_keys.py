"""TUF role keys in the HSM: the targets key generated in and used from SoftHSM2, never
leaving the token, signs metadata that TUF verifies against the root."""

from __future__ import annotations

from pathlib import Path

import pytest
from securesystemslib.signer import Signer

from aeamc.coordinator.config import UpdatesConfig
from aeamc.coordinator.updates.repository import Repository
from aeamc.coordinator.updates.signing import Ed25519Signer, keygen, load_role_signer
from tests.updates.releases import fake_release

from .conftest import SoftHsm


def test_targets_key_in_the_hsm(softhsm: SoftHsm, tmp_path: Path) -> None:
    keys = tmp_path / "offline"
    keygen(keys, roles=("root",))
    uri = softhsm.uri("tuf-targets")
    repo = Repository(tmp_path / "updates", UpdatesConfig(targets_key=uri), state_dir=tmp_path)
    ids = repo.init(keys)  # generates the targets key in the token
    hsm = load_role_signer(uri)
    assert ids["targets"] == hsm.keyid
    assert repo.root().signed.roles["targets"].keyids == [hsm.keyid]
    # Publishing needs no key folder: the token signs.
    assert repo.publish(fake_release(tmp_path / "w", "0.2.0"), None) == "0.2.0"
    targets = repo.targets()
    repo.root().verify_delegate("targets", targets)
    assert list(targets.signatures) == [hsm.keyid]
    # The securesystemslib way to the same key, checked against the listed public key.
    Signer.from_priv_key_uri  # noqa: B018 - the interface Ed25519Signer implements
    again = Ed25519Signer.from_priv_key_uri(uri, hsm.public_key)
    assert again.keyid == hsm.keyid
    other = load_role_signer(keys / "root.key")
    with pytest.raises(ValueError, match="not the one"):
        Ed25519Signer.from_priv_key_uri(uri, other.public_key)
