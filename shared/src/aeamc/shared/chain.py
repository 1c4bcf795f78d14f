"""The on-chain step of receipt verification, over JSON-RPC with web3.

Only ``aeamc verify`` uses this module, and web3 is imported inside its functions, so the
protocol core stays importable without it (devices never install web3). The only ABI
needed is ``verifyAnchor``'s, embedded below: an auditor needs no artifact file and no
trust in the coordinator, only an RPC endpoint of the chain.
"""

from __future__ import annotations

from typing import Any

from .bundle import ChainCheck, OnChainAnchor

VERIFY_ANCHOR_ABI: list[dict[str, Any]] = [
    {
        "type": "function",
        "name": "verifyAnchor",
        "stateMutability": "view",
        "inputs": [{"name": "root", "type": "bytes32"}],
        "outputs": [
            {"name": "anchored", "type": "bool"},
            {"name": "timestamp", "type": "uint256"},
            {"name": "blockNumber", "type": "uint256"},
        ],
    }
]


class ChainMismatch(Exception):
    """The endpoint is not the chain the bundle names."""


def web3_chain_check(
    rpc_url: str, *, contract: str | None = None, timeout_s: float = 30.0
) -> ChainCheck:
    """A :data:`~aeamc.shared.bundle.ChainCheck` that calls ``verifyAnchor(root)``.

    ``contract`` replaces the bundle's contract address: the bundle comes from the
    coordinator, and an auditor who knows the real contract should not take its word.
    """
    from web3 import Web3

    w3 = Web3(
        Web3.HTTPProvider(
            rpc_url, request_kwargs={"timeout": timeout_s}, exception_retry_configuration=None
        )
    )

    def check(root: bytes, chain_id: int, bundle_contract: str) -> OnChainAnchor:
        actual = int(w3.eth.chain_id)
        if actual != chain_id:
            raise ChainMismatch(f"the RPC endpoint is chain {actual}, the bundle says {chain_id}")
        address = Web3.to_checksum_address(contract or bundle_contract)
        if not w3.eth.get_code(address):
            raise ChainMismatch(f"no contract at {address} on chain {actual}")
        c = w3.eth.contract(address=address, abi=VERIFY_ANCHOR_ABI)
        anchored, timestamp, block_number = c.functions.verifyAnchor(root).call()
        return OnChainAnchor(bool(anchored), int(timestamp), int(block_number))

    return check
