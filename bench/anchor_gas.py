"""Anchoring cost on a real EVM: gas per anchor transaction of MicroblockAnchor against a
bare anchor contract (one slot + one event, no access control) and against the original
design (a four-slot struct per microblock), all compiled with the same settings and
measured on the same anvil node in the same run.

Gas is deterministic for a given bytecode and input, so one node gives exact figures;
the ratio is what the target is stated in.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from web3 import Web3

from aeamc.coordinator.devnet import Proc, find_anvil, free_port

ARTIFACTS = Path(__file__).resolve().parents[1] / "contracts" / "artifacts"
#: The target: MicroblockAnchor's anchor tx at most 1.12x a bare anchor's.
TARGET_RATIO = 1.12


def _deploy(w3: Web3, name: str) -> Any:
    art = json.loads((ARTIFACTS / f"{name}.json").read_text())
    factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
    receipt = w3.eth.wait_for_transaction_receipt(factory.constructor().transact())
    return w3.eth.contract(address=receipt["contractAddress"], abi=art["abi"])


def _gas(w3: Web3, call: Any) -> int:
    receipt = w3.eth.wait_for_transaction_receipt(call.transact())
    assert receipt["status"] == 1
    return int(receipt["gasUsed"])


def measure(roots: int = 20) -> dict[str, Any]:
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"aeamc-bench-anvil-{port}.log"
    anvil = Proc("anvil", [str(find_anvil()), "--port", str(port), "--hardfork", "cancun"], log)
    anvil.start()
    try:
        w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}", request_kwargs={"timeout": 10}))
        for _ in range(100):
            try:
                w3.eth.chain_id  # noqa: B018 - readiness probe
                break
            except Exception:  # not listening yet
                time.sleep(0.1)
        w3.eth.default_account = w3.eth.accounts[0]
        ours = _deploy(w3, "MicroblockAnchor")
        bare = _deploy(w3, "BareAnchor")
        seed = _deploy(w3, "SeedMicroblockRegistry")
        gas: dict[str, list[int]] = {"MicroblockAnchor": [], "BareAnchor": [], "Seed": []}
        for i in range(roots):
            root = os.urandom(32)
            gas["MicroblockAnchor"].append(_gas(w3, ours.functions.anchor(root)))
            gas["BareAnchor"].append(_gas(w3, bare.functions.anchor(root)))
            gas["Seed"].append(_gas(w3, seed.functions.anchor(root, os.urandom(32), i + 1)))
    finally:
        anvil.stop()
    med = {k: statistics.median(v) for k, v in gas.items()}
    return {
        "roots": roots,
        "gas_per_anchor_tx": med,
        "spread": {k: [min(v), max(v)] for k, v in gas.items()},
        "ratio_to_bare": {k: med[k] / med["BareAnchor"] for k in med},
        "target_ratio": TARGET_RATIO,
        "target_met": med["MicroblockAnchor"] / med["BareAnchor"] <= TARGET_RATIO,
        "note": "one anchor tx covers any number of microblocks (a Merkle root of their hashes)",
    }


if __name__ == "__main__":
    result = measure(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
