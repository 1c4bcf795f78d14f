"""Blocking access to the chain the coordinator anchors on: a JSON-RPC endpoint, or the
embedded in-process EVM (eth-tester + py-evm) when no endpoint is configured.

Every method blocks. The anchoring service runs them on its one chain thread, never on the
event loop; the command line calls them directly. Every HTTP request has a timeout and is
not retried here: the service retries at its own pace and counts the failures.
"""

from __future__ import annotations

import ast
import json
import re
import time
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import urlsplit

from aeamc.shared.anchoring import Fees, Receipt, initial_fees

from .wallet import SignedTx, TxSigner

ARTIFACT = "MicroblockAnchor.json"
#: eth-tester's prefunded accounts hold 1,000,000 ether each; the wallet gets this much.
EMBEDDED_FUNDING_WEI = 1_000 * 10**18
GWEI = 10**9


class ChainError(Exception):
    """The chain cannot be used as configured (wrong chain, no contract, no funds)."""


class AnchorRefused(ChainError):
    """The contract would revert ``anchor(root)``; ``name`` is the custom error if known."""

    def __init__(self, name: str | None, message: str) -> None:
        super().__init__(message)
        self.name = name


def load_artifact() -> dict[str, Any]:
    """The MicroblockAnchor build output shipped in this package."""
    text = resources.files(__package__).joinpath(ARTIFACT).read_text()
    artifact: dict[str, Any] = json.loads(text)
    return artifact


def redact_url(url: str) -> str:
    """Scheme, host and port only: provider URLs often carry an API key in the path."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


@dataclass(frozen=True)
class AnchoredEvent:
    tx_hash: str
    block_number: int
    block_hash: bytes


def _hex(value: Any) -> str:
    return "0x" + bytes(value).hex()


class Chain:
    """One chain and, once bound, the MicroblockAnchor contract on it."""

    def __init__(self, w3: Any, *, embedded: bool, label: str, tester: Any = None) -> None:
        self.w3 = w3
        self.embedded = embedded
        #: What status output may show: "embedded" or the endpoint without credentials.
        self.label = label
        self._tester = tester
        self._artifact = load_artifact()
        self._chain_id: int | None = None
        self.contract: Any = None
        self._error_selectors: dict[bytes, str] = {}

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def connect(cls, url: str, timeout_s: float) -> Chain:
        """A client of the JSON-RPC endpoint at ``url``; every request times out after
        ``timeout_s`` and is never retried here. Nothing is asked of the node yet."""
        from web3 import Web3
        from web3.middleware import ExtraDataToPOAMiddleware

        provider = Web3.HTTPProvider(
            url, request_kwargs={"timeout": timeout_s}, exception_retry_configuration=None
        )
        w3 = Web3(provider)
        # Proof-of-authority chains put more than 32 bytes into extraData; harmless elsewhere.
        w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
        return cls(w3, embedded=False, label=redact_url(url))

    @classmethod
    def start_embedded(cls) -> Chain:
        """A fresh in-process chain. It lives in this process only: lost on restart."""
        from web3 import EthereumTesterProvider, Web3

        provider = EthereumTesterProvider()
        return cls(Web3(provider), embedded=True, label="embedded", tester=provider.ethereum_tester)

    def bind(self, address: str) -> None:
        """Use the MicroblockAnchor at ``address`` from now on, and learn its error names."""
        from web3 import Web3

        self.contract = self.w3.eth.contract(
            address=Web3.to_checksum_address(address), abi=self._artifact["abi"]
        )
        from eth_utils import abi_to_signature, function_signature_to_4byte_selector

        self._error_selectors = {
            function_signature_to_4byte_selector(abi_to_signature(e)): str(e["name"])
            for e in self._artifact["abi"]
            if e.get("type") == "error"
        }

    @property
    def address(self) -> str:
        """Checksummed address of the bound contract."""
        return str(self.contract.address)

    # -- reads ------------------------------------------------------------------------------

    def chain_id(self) -> int:
        """The node's chain id, asked once and remembered."""
        if self._chain_id is None:
            self._chain_id = int(self.w3.eth.chain_id)
        return self._chain_id

    def head(self) -> int:
        """Number of the node's latest block."""
        return int(self.w3.eth.block_number)

    def block_hash(self, number: int) -> bytes | None:
        """Hash of the canonical block at ``number``; ``None`` above the head."""
        from web3.exceptions import BlockNotFound

        try:
            block = self.w3.eth.get_block(number)
        except BlockNotFound:
            return None
        return bytes(block["hash"]) if block else None

    def balance(self, address: str) -> int:
        """Balance of ``address`` at the head, in wei."""
        return int(self.w3.eth.get_balance(address))

    def tx_count(self, address: str, block: str | int = "latest") -> int:
        """Transactions sent by ``address`` as of ``block`` (a number, ``"latest"`` or
        ``"pending"``, which counts the node's mempool): the next nonce there."""
        return int(self.w3.eth.get_transaction_count(address, block))

    def has_code(self, address: str) -> bool:
        """Whether a contract is deployed at ``address``."""
        from web3 import Web3

        return len(self.w3.eth.get_code(Web3.to_checksum_address(address))) > 0

    def is_submitter(self, address: str) -> bool:
        """Whether the bound contract lets ``address`` call ``anchor``."""
        return bool(self.contract.functions.isSubmitter(address).call())

    def market_fees(self, priority_wei: int, cap_wei: int) -> Fees:
        """Fees for a transaction now: the configured tip or the node's suggestion."""
        base = int(self.w3.eth.get_block("latest").get("baseFeePerGas") or 0)
        tip = priority_wei or int(self.w3.eth.max_priority_fee)
        return initial_fees(base, tip, cap_wei)

    def verify_anchor(self, root: bytes) -> tuple[bool, int, int]:
        """``verifyAnchor(root)``: (anchored, block timestamp, block number)."""
        anchored, timestamp, block_number = self.contract.functions.verifyAnchor(root).call()
        return bool(anchored), int(timestamp), int(block_number)

    def receipt(self, tx_hash: str) -> Receipt | None:
        """The receipt of a mined transaction; ``None`` while unknown or not mined."""
        from web3.exceptions import TransactionNotFound

        try:
            r = self.w3.eth.get_transaction_receipt(tx_hash)
        except TransactionNotFound:
            return None
        if r is None or r.get("blockNumber") is None:
            return None
        return Receipt(
            tx_hash=_hex(r["transactionHash"]),
            block_number=int(r["blockNumber"]),
            block_hash=bytes(r["blockHash"]),
            status=int(r["status"]),
            gas_used=int(r["gasUsed"]),
            effective_gas_price=int(r.get("effectiveGasPrice") or 0),
        )

    def knows(self, tx_hash: str) -> bool:
        """Whether the node holds the transaction, in its mempool or in a block."""
        from web3.exceptions import TransactionNotFound

        try:
            return self.w3.eth.get_transaction(tx_hash) is not None
        except TransactionNotFound:
            return False

    def anchored_event(self, root: bytes, block_number: int) -> AnchoredEvent | None:
        """The ``Anchored`` event of ``root`` in the block ``verifyAnchor`` named."""
        logs = self.contract.events.Anchored.get_logs(
            from_block=block_number, to_block=block_number, argument_filters={"root": root}
        )
        for log in logs:
            if bytes(log["args"]["root"]) == root:
                return AnchoredEvent(
                    _hex(log["transactionHash"]), int(log["blockNumber"]), bytes(log["blockHash"])
                )
        return None

    # -- writes -----------------------------------------------------------------------------

    def preflight(self, root: bytes, sender: str) -> int:
        """Gas limit for ``anchor(root)`` from ``sender``, with a margin; raises
        :class:`AnchorRefused` when the contract would revert (paused, not a submitter…)."""
        try:
            estimate = int(self.contract.functions.anchor(root).estimate_gas({"from": sender}))
        except Exception as exc:
            name = self._revert_name(exc)
            if name is None and not _looks_like_revert(exc):
                raise  # a transport failure, not the contract's answer
            raise AnchorRefused(name, f"the contract refuses anchor(): {name or exc}") from None
        return estimate + estimate // 4

    def anchor_tx(self, root: bytes, nonce: int, fees: Fees, gas: int) -> dict[str, Any]:
        """The unsigned EIP-1559 ``anchor(root)`` transaction to the bound contract."""
        return {
            "type": 2,
            "chainId": self.chain_id(),
            "nonce": nonce,
            "to": self.contract.address,
            "value": 0,
            "gas": gas,
            "maxFeePerGas": fees.max_fee_per_gas,
            "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
            "data": self.contract.encode_abi("anchor", args=[root]),
        }

    def send_raw(self, raw: bytes) -> tuple[bool, str]:
        """Hand a signed transaction to the node: (accepted, what the node said).

        A refusal is an answer, not a failure: "already known" means accepted; "nonce too
        low" and underpricing are left to the next look at the chain to interpret.
        """
        from web3.exceptions import Web3RPCError

        try:
            self.w3.eth.send_raw_transaction(raw)
        except Web3RPCError as exc:
            message = str(exc.message if hasattr(exc, "message") else exc)
            if "already known" in message.lower() or "known transaction" in message.lower():
                return True, message
            return False, message
        except ValueError as exc:  # eth-tester raises plain validation errors
            return False, str(exc)
        return True, "accepted"

    def deploy(self, signer: TxSigner, *, cap_wei: int, priority_wei: int = 0) -> str:
        """Deploy MicroblockAnchor from ``signer`` (its owner and first submitter)."""
        sender = signer.address
        data = self._artifact["bytecode"]
        estimate = int(self.w3.eth.estimate_gas({"from": sender, "data": data}))
        fees = self.market_fees(priority_wei, cap_wei)
        signed = signer.sign_transaction(
            {
                "type": 2,
                "chainId": self.chain_id(),
                "nonce": self.tx_count(sender, "pending"),
                "value": 0,
                "gas": estimate + estimate // 5,
                "maxFeePerGas": fees.max_fee_per_gas,
                "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
                "data": data,
            }
        )
        receipt = self.wait_for_receipt(signed, timeout_s=300)
        full = self.w3.eth.get_transaction_receipt(signed.tx_hash)
        if receipt.status != 1 or not full.get("contractAddress"):
            raise ChainError(f"deployment transaction {signed.tx_hash} failed")
        address = str(full["contractAddress"])
        self.bind(address)
        return address

    def wait_for_receipt(self, signed: SignedTx, *, timeout_s: float) -> Receipt:
        """Send ``signed`` and block until it is mined; raises :class:`ChainError` if the
        node refuses it or it is not mined within ``timeout_s`` (for the command line)."""
        ok, message = self.send_raw(signed.raw)
        if not ok:
            raise ChainError(f"the node refused the transaction: {message}")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            receipt = self.receipt(signed.tx_hash)
            if receipt is not None:
                return receipt
            time.sleep(0.5)
        raise ChainError(f"{signed.tx_hash} was not mined within {timeout_s:g} s")

    # -- the embedded chain only ------------------------------------------------------------

    def fund(self, address: str, wei: int = EMBEDDED_FUNDING_WEI) -> None:
        """Give ``address`` ether from the in-process chain's prefunded account."""
        self._embedded_only()
        tx = self.w3.eth.send_transaction(
            {"from": self.w3.eth.accounts[0], "to": address, "value": wei}
        )
        self.w3.eth.get_transaction_receipt(tx)

    def mine(self, blocks: int = 1) -> None:
        """The in-process chain only mines on transactions; empty blocks make confirmations."""
        self._embedded_only()
        self._tester.mine_blocks(blocks)

    def _embedded_only(self) -> None:
        if not self.embedded:
            raise ChainError("only the embedded chain can do this")

    # -- reverts ----------------------------------------------------------------------------

    def _revert_name(self, exc: Exception) -> str | None:
        """Custom error name of a revert, from web3's ContractCustomError data or from the
        bytes eth-tester quotes in its message."""
        data = getattr(exc, "data", None)
        raw: bytes | None = None
        if isinstance(data, str) and data.startswith("0x"):
            try:
                raw = bytes.fromhex(data[2:])
            except ValueError:
                raw = None
        if raw is None:
            match = re.search(r"(b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\")", str(exc))
            if match:
                try:
                    raw = ast.literal_eval(match.group(1))
                except (ValueError, SyntaxError):
                    raw = None
        if not raw or len(raw) < 4:
            return None
        return self._error_selectors.get(raw[:4])


def _looks_like_revert(exc: Exception) -> bool:
    name = type(exc).__name__
    return name in {"ContractLogicError", "ContractCustomError", "TransactionFailed"} or (
        "revert" in str(exc).lower()
    )
