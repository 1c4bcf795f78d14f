"""MicroblockAnchor against a real anvil node: access control, pause, anchoring, verification.

Every revert is checked by its decoded custom error, so a test cannot pass because the call
failed for some other reason (out of gas, wrong ABI, node down).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from web3 import Web3
from web3.contract import Contract
from web3.exceptions import ContractCustomError

from tests.fixtures.anvil import AnvilNode, decode_custom_error, deploy_artifact, load_artifact

GAS_BUDGET_RATIO = 1.12  # anchor() may cost at most this multiple of BareAnchor.anchor()
ZERO_ROOT = b"\x00" * 32
ZERO_ADDRESS = "0x" + "00" * 20


def root_of(label: str) -> bytes:
    """A realistic root: 32 pseudo-random bytes, like a SHA-256 Merkle root."""
    return hashlib.sha256(label.encode()).digest()


def revert_error(call: Any, sender: str) -> tuple[str, tuple[Any, ...]]:
    """Send ``call`` from ``sender`` and return the custom error it reverts with."""
    with pytest.raises(ContractCustomError) as excinfo:
        call.transact({"from": sender})
    return decode_custom_error(load_artifact("MicroblockAnchor")["abi"], excinfo.value.data)


def transact(w3: Web3, call: Any, sender: str) -> Any:
    """Send ``call`` and return its receipt, asserting it succeeded."""
    receipt = w3.eth.wait_for_transaction_receipt(call.transact({"from": sender}), timeout=30)
    assert receipt["status"] == 1
    return receipt


def storage_word(node: AnvilNode, contract: Contract, slot: int) -> int:
    """Raw value of a storage slot, to check the layout the gas figures depend on."""
    return int(node.rpc("eth_getStorageAt", contract.address, hex(slot), "latest"), 16)


def address_word(address: str) -> int:
    return int(address, 16)


@pytest.fixture
def contract(anvil_w3: Web3) -> Contract:
    """A freshly deployed MicroblockAnchor, owned by dev account 0."""
    return deploy_artifact(anvil_w3, "MicroblockAnchor")


@pytest.fixture
def owner(anvil: AnvilNode) -> str:
    return anvil.accounts[0].address


@pytest.fixture
def stranger(anvil: AnvilNode) -> str:
    return anvil.accounts[1].address


@pytest.fixture
def other(anvil: AnvilNode) -> str:
    return anvil.accounts[2].address


def test_deployer_is_owner_and_first_submitter(
    contract: Contract, owner: str, stranger: str
) -> None:
    assert contract.functions.owner().call() == owner
    assert contract.functions.pendingOwner().call() == ZERO_ADDRESS
    assert contract.functions.isSubmitter(owner).call() is True
    assert contract.functions.isSubmitter(stranger).call() is False
    assert contract.functions.paused().call() is False


@pytest.mark.parametrize(
    ("function", "uses_account"),
    [
        ("addSubmitter", True),
        ("removeSubmitter", True),
        ("transferOwnership", True),
        ("pause", False),
        ("unpause", False),
    ],
)
def test_admin_functions_are_owner_only(
    contract: Contract, owner: str, stranger: str, function: str, uses_account: bool
) -> None:
    args = (stranger,) if uses_account else ()
    assert revert_error(contract.functions[function](*args), stranger) == ("NotOwner", ())
    assert contract.functions.owner().call() == owner
    assert contract.functions.pendingOwner().call() == ZERO_ADDRESS
    assert contract.functions.isSubmitter(stranger).call() is False
    assert contract.functions.isSubmitter(owner).call() is True
    assert contract.functions.paused().call() is False


def test_non_submitter_cannot_anchor(contract: Contract, stranger: str) -> None:
    root = root_of("stranger")
    assert revert_error(contract.functions.anchor(root), stranger) == ("NotSubmitter", ())
    assert contract.functions.verifyAnchor(root).call() == [False, 0, 0]


def test_reverted_anchor_mined_anyway_changes_nothing(
    anvil_w3: Web3, contract: Contract, stranger: str
) -> None:
    # An explicit gas limit skips estimation, so the revert happens on chain, not in a dry run.
    root = root_of("mined revert")
    tx = contract.functions.anchor(root).transact({"from": stranger, "gas": 200_000})
    receipt = anvil_w3.eth.wait_for_transaction_receipt(tx, timeout=30)
    assert receipt["status"] == 0
    assert receipt["logs"] == []
    assert contract.functions.verifyAnchor(root).call() == [False, 0, 0]


def test_anchor_emits_event_and_records_its_block(
    anvil: AnvilNode, anvil_w3: Web3, contract: Contract, owner: str
) -> None:
    root = root_of("block 1..7")
    receipt = transact(anvil_w3, contract.functions.anchor(root), owner)
    block = anvil_w3.eth.get_block(receipt["blockNumber"])

    events = contract.events.Anchored().process_receipt(receipt)
    assert len(events) == 1
    assert len(receipt["logs"]) == 1
    assert events[0]["address"] == contract.address
    assert dict(events[0]["args"]) == {
        "root": root,
        "submitter": owner,
        "timestamp": block["timestamp"],
        "blockNumber": receipt["blockNumber"],
    }

    anvil.mine(3, timestamp=block["timestamp"] + 100)
    assert anvil.block_number() == receipt["blockNumber"] + 3
    # The anchoring block, not the latest one, is what a proof bundle refers to.
    assert contract.functions.verifyAnchor(root).call() == [
        True,
        block["timestamp"],
        receipt["blockNumber"],
    ]


def test_event_topics_allow_filtering_by_root_and_submitter(
    anvil_w3: Web3, contract: Contract, owner: str
) -> None:
    root = root_of("indexed")
    receipt = transact(anvil_w3, contract.functions.anchor(root), owner)
    topics = receipt["logs"][0]["topics"]
    signature = "Anchored(bytes32,address,uint256,uint256)"
    assert topics[0] == Web3.keccak(text=signature)
    assert bytes(topics[1]) == root
    assert bytes(topics[2])[-20:] == bytes.fromhex(owner[2:])


@pytest.mark.parametrize("root", [root_of("never anchored"), ZERO_ROOT], ids=["unknown", "zero"])
def test_unknown_roots_are_not_anchored(contract: Contract, root: bytes) -> None:
    assert contract.functions.verifyAnchor(root).call() == [False, 0, 0]


def test_zero_root_is_rejected(contract: Contract, owner: str) -> None:
    assert revert_error(contract.functions.anchor(ZERO_ROOT), owner) == ("ZeroRoot", ())


def test_duplicate_root_is_rejected_and_keeps_first_record(
    anvil: AnvilNode, anvil_w3: Web3, contract: Contract, owner: str, other: str
) -> None:
    root = root_of("twice")
    first = transact(anvil_w3, contract.functions.anchor(root), owner)
    recorded = contract.functions.verifyAnchor(root).call()
    anvil.mine(2)
    transact(anvil_w3, contract.functions.addSubmitter(other), owner)

    for sender in (owner, other):
        assert revert_error(contract.functions.anchor(root), sender) == ("AlreadyAnchored", (root,))
    assert contract.functions.verifyAnchor(root).call() == recorded
    assert recorded[2] == first["blockNumber"]


def test_pause_blocks_anchoring_and_unpause_restores_it(
    anvil_w3: Web3, contract: Contract, owner: str
) -> None:
    receipt = transact(anvil_w3, contract.functions.pause(), owner)
    (event,) = contract.events.PauseChanged().process_receipt(receipt)
    assert dict(event["args"]) == {"paused": True, "by": owner}
    assert contract.functions.paused().call() is True

    root = root_of("while paused")
    assert revert_error(contract.functions.anchor(root), owner) == ("Paused", ())
    assert contract.functions.verifyAnchor(root).call() == [False, 0, 0]

    transact(anvil_w3, contract.functions.unpause(), owner)
    assert contract.functions.paused().call() is False
    receipt = transact(anvil_w3, contract.functions.anchor(root), owner)
    assert contract.functions.verifyAnchor(root).call()[0:3:2] == [True, receipt["blockNumber"]]


def test_pause_keeps_owner(anvil_w3: Web3, contract: Contract, owner: str) -> None:
    # owner and paused share a storage slot; writing one must not clobber the other.
    transact(anvil_w3, contract.functions.pause(), owner)
    assert contract.functions.owner().call() == owner
    transact(anvil_w3, contract.functions.unpause(), owner)
    assert contract.functions.owner().call() == owner


def test_added_submitter_anchors_and_removal_takes_effect(
    anvil_w3: Web3, contract: Contract, owner: str, other: str
) -> None:
    receipt = transact(anvil_w3, contract.functions.addSubmitter(other), owner)
    (added,) = contract.events.SubmitterAdded().process_receipt(receipt)
    assert added["args"]["account"] == other
    assert contract.functions.isSubmitter(other).call() is True

    receipt = transact(anvil_w3, contract.functions.anchor(root_of("by other")), other)
    (event,) = contract.events.Anchored().process_receipt(receipt)
    assert event["args"]["submitter"] == other

    receipt = transact(anvil_w3, contract.functions.removeSubmitter(other), owner)
    (removed,) = contract.events.SubmitterRemoved().process_receipt(receipt)
    assert removed["args"]["account"] == other
    assert contract.functions.isSubmitter(other).call() is False
    root = root_of("after removal")
    assert revert_error(contract.functions.anchor(root), other) == ("NotSubmitter", ())
    assert contract.functions.verifyAnchor(root).call() == [False, 0, 0]


def test_owner_can_revoke_own_submitter_role(
    anvil_w3: Web3, contract: Contract, owner: str
) -> None:
    transact(anvil_w3, contract.functions.removeSubmitter(owner), owner)
    assert revert_error(contract.functions.anchor(root_of("self")), owner) == ("NotSubmitter", ())
    assert contract.functions.owner().call() == owner


def test_add_submitter_rejects_zero_address(contract: Contract, owner: str) -> None:
    assert revert_error(contract.functions.addSubmitter(ZERO_ADDRESS), owner) == ("ZeroAddress", ())


def test_transfer_ownership_only_names_pending_owner(
    anvil_w3: Web3, contract: Contract, owner: str, other: str, stranger: str
) -> None:
    receipt = transact(anvil_w3, contract.functions.transferOwnership(other), owner)
    (event,) = contract.events.OwnershipTransferStarted().process_receipt(receipt)
    assert dict(event["args"]) == {"previousOwner": owner, "newOwner": other}
    assert len(receipt["logs"]) == 1  # no OwnershipTransferred yet
    assert contract.functions.owner().call() == owner
    assert contract.functions.pendingOwner().call() == other

    # Until it accepts, the named account has no rights and the owner keeps all of them.
    assert revert_error(contract.functions.pause(), other) == ("NotOwner", ())
    assert revert_error(contract.functions.addSubmitter(other), other) == ("NotOwner", ())
    transact(anvil_w3, contract.functions.addSubmitter(stranger), owner)
    assert contract.functions.isSubmitter(stranger).call() is True


def test_accept_ownership_moves_admin_rights(
    anvil_w3: Web3, contract: Contract, owner: str, other: str, stranger: str
) -> None:
    transact(anvil_w3, contract.functions.transferOwnership(other), owner)
    receipt = transact(anvil_w3, contract.functions.acceptOwnership(), other)
    (event,) = contract.events.OwnershipTransferred().process_receipt(receipt)
    assert dict(event["args"]) == {"previousOwner": owner, "newOwner": other}
    assert len(receipt["logs"]) == 1
    assert contract.functions.owner().call() == other
    assert contract.functions.pendingOwner().call() == ZERO_ADDRESS

    # The old owner has no admin rights left, and cannot take the contract back.
    for call in (
        contract.functions.pause(),
        contract.functions.addSubmitter(stranger),
        contract.functions.removeSubmitter(other),
        contract.functions.transferOwnership(owner),
    ):
        assert revert_error(call, owner) == ("NotOwner", ())
    assert revert_error(contract.functions.acceptOwnership(), owner) == ("NotPendingOwner", ())
    # Acceptance is one-shot: the pending slot is cleared, so not even the new owner repeats it.
    assert revert_error(contract.functions.acceptOwnership(), other) == ("NotPendingOwner", ())

    transact(anvil_w3, contract.functions.addSubmitter(stranger), other)
    assert contract.functions.isSubmitter(stranger).call() is True
    # Submitter rights are a separate role: the old owner keeps anchoring until removed.
    transact(anvil_w3, contract.functions.anchor(root_of("old owner")), owner)


@pytest.mark.parametrize("pending", [False, True], ids=["no-transfer", "transfer-pending"])
def test_only_pending_owner_can_accept(
    anvil: AnvilNode, anvil_w3: Web3, contract: Contract, pending: bool
) -> None:
    owner, stranger, other = (account.address for account in anvil.accounts[:3])
    if pending:
        transact(anvil_w3, contract.functions.transferOwnership(other), owner)
    for sender in (stranger, owner):
        assert revert_error(contract.functions.acceptOwnership(), sender) == (
            "NotPendingOwner",
            (),
        )
    assert contract.functions.owner().call() == owner
    assert contract.functions.pendingOwner().call() == (other if pending else ZERO_ADDRESS)


def test_mistyped_transfer_is_replaced_before_acceptance(
    anvil_w3: Web3, contract: Contract, owner: str, other: str, stranger: str
) -> None:
    transact(anvil_w3, contract.functions.transferOwnership(stranger), owner)
    receipt = transact(anvil_w3, contract.functions.transferOwnership(other), owner)
    (event,) = contract.events.OwnershipTransferStarted().process_receipt(receipt)
    assert dict(event["args"]) == {"previousOwner": owner, "newOwner": other}
    assert contract.functions.pendingOwner().call() == other

    # The replaced account lost its chance; the intended one takes over.
    assert revert_error(contract.functions.acceptOwnership(), stranger) == ("NotPendingOwner", ())
    transact(anvil_w3, contract.functions.acceptOwnership(), other)
    assert contract.functions.owner().call() == other


def test_transfer_to_zero_address_cancels(
    anvil_w3: Web3, contract: Contract, owner: str, other: str
) -> None:
    transact(anvil_w3, contract.functions.transferOwnership(other), owner)
    receipt = transact(anvil_w3, contract.functions.transferOwnership(ZERO_ADDRESS), owner)
    (event,) = contract.events.OwnershipTransferStarted().process_receipt(receipt)
    assert dict(event["args"]) == {"previousOwner": owner, "newOwner": ZERO_ADDRESS}
    assert contract.functions.pendingOwner().call() == ZERO_ADDRESS

    assert revert_error(contract.functions.acceptOwnership(), other) == ("NotPendingOwner", ())
    assert contract.functions.owner().call() == owner
    transact(anvil_w3, contract.functions.pause(), owner)


def test_hostile_account_cannot_take_over_during_transfer(
    anvil: AnvilNode, anvil_w3: Web3, contract: Contract, owner: str, other: str
) -> None:
    hostile = anvil.accounts[3].address
    transact(anvil_w3, contract.functions.transferOwnership(other), owner)

    # It cannot name itself, and its acceptance, even mined on chain (explicit gas skips the
    # dry run), changes nothing.
    assert revert_error(contract.functions.transferOwnership(hostile), hostile) == ("NotOwner", ())
    tx = contract.functions.acceptOwnership().transact({"from": hostile, "gas": 200_000})
    receipt = anvil_w3.eth.wait_for_transaction_receipt(tx, timeout=30)
    assert receipt["status"] == 0
    assert receipt["logs"] == []
    assert contract.functions.owner().call() == owner
    assert contract.functions.pendingOwner().call() == other

    transact(anvil_w3, contract.functions.acceptOwnership(), other)
    assert revert_error(contract.functions.acceptOwnership(), hostile) == ("NotPendingOwner", ())
    assert contract.functions.owner().call() == other


def test_ownership_handover_keeps_pause_and_slot_layout(
    anvil: AnvilNode, anvil_w3: Web3, contract: Contract, owner: str, other: str
) -> None:
    # owner and paused share slot 0 (one cold SLOAD in anchor); pendingOwner has slot 1.
    # Writing owner in acceptOwnership must not clobber paused.
    transact(anvil_w3, contract.functions.pause(), owner)
    transact(anvil_w3, contract.functions.transferOwnership(other), owner)
    assert storage_word(anvil, contract, 1) == address_word(other)
    transact(anvil_w3, contract.functions.acceptOwnership(), other)

    assert contract.functions.paused().call() is True
    assert storage_word(anvil, contract, 0) == (1 << 160) | address_word(other)
    assert storage_word(anvil, contract, 1) == 0
    assert revert_error(contract.functions.anchor(root_of("paused")), owner) == ("Paused", ())
    transact(anvil_w3, contract.functions.unpause(), other)
    assert contract.functions.owner().call() == other


def test_anchor_gas_stays_within_budget_of_bare_contract(
    anvil_w3: Web3, owner: str, record_property: Any
) -> None:
    """Access control must stay cheap: anchoring runs every interval, forever."""
    gas: dict[str, int] = {}
    for name in ("BareAnchor", "MicroblockAnchor", "SeedMicroblockRegistry"):
        deployed = deploy_artifact(anvil_w3, name)
        root = root_of("gas")
        call = (
            deployed.functions.anchor(root, root_of("previous"), 17)
            if name == "SeedMicroblockRegistry"
            else deployed.functions.anchor(root)
        )
        gas[name] = transact(anvil_w3, call, owner)["gasUsed"]
        record_property(f"gas_{name}", gas[name])

    ratio = gas["MicroblockAnchor"] / gas["BareAnchor"]
    assert ratio <= GAS_BUDGET_RATIO, f"anchor costs {ratio:.3f}x bare: {gas}"
    assert gas["SeedMicroblockRegistry"] > 2 * gas["MicroblockAnchor"], gas


def test_deployed_code_is_the_artifact(anvil_w3: Web3, contract: Contract) -> None:
    # No immutables, so the runtime code on chain must equal the checked-in artifact byte
    # for byte; a mismatch would mean tests exercise something other than what ships.
    expected = load_artifact("MicroblockAnchor")["deployedBytecode"]
    assert "0x" + anvil_w3.eth.get_code(contract.address).hex().removeprefix("0x") == expected
