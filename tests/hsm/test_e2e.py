"""The happy path with every private key in SoftHSM2: a real coordinator process whose
identity and anchoring wallet are token keys, anchoring to a real anvil, and a real agent
process whose device key is a token key."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from aeamc.shared.identity import device_id_for
from aeamc.shared.runtime.pkcs11 import Ed25519HsmSigner, Secp256k1HsmSigner
from tests.anchoring.conftest import miner
from tests.fixtures.anvil import AnvilNode
from tests.support.agent import AgentProcess
from tests.support.coordinator import CoordinatorProcess

from .conftest import SoftHsm

CHAIN = {"anchor_interval_s": 0.3, "poll_s": 0.1, "confirmations": 2, "rpc_timeout_s": 3.0}
TASK = {"kind": "sha256-chain", "params": {"seed": "5e" * 32, "iterations": 500}, "chunks": 4}


def test_agent_and_coordinator_with_keys_in_softhsm(
    softhsm: SoftHsm, label: Callable[[str], str], anvil: AnvilNode, tmp_path: Any
) -> None:
    coord_uri = softhsm.uri(label("coordinator"))
    wallet_uri = softhsm.uri(label("anchor-wallet"))
    device_uri = softhsm.uri(label("device"))
    coord = CoordinatorProcess(
        tmp_path / "coord",
        settings={
            "identity_key": coord_uri,
            "chain": {"rpc_url": anvil.url, "wallet_key": wallet_uri, **CHAIN},
        },
    )
    agent: AgentProcess | None = None
    try:
        coord.init()  # generates both keys in the token
        assert not (coord.state_dir / "identity.key").exists()
        assert not (coord.state_dir / "anchor-wallet.key").exists()
        wallet = Secp256k1HsmSigner(wallet_uri)
        refused = coord.cli("chain", "deploy", check=False)
        assert refused.returncode == 1 and wallet.address in refused.stderr, refused.stderr
        anvil.rpc("anvil_setBalance", wallet.address, hex(10 * 10**18))
        deployed = coord.cli("chain", "deploy")  # the deployment is signed in the token too
        assert re.search(r"deployed MicroblockAnchor at 0x[0-9a-fA-F]{40}", deployed.stdout)
        coord.start()
        coordinator_id = device_id_for(Ed25519HsmSigner(coord_uri).public_key)
        assert coord.request("GET", "/v1/health")[1]["coordinator_id"] == coordinator_id

        agent = AgentProcess(
            tmp_path / "agent",
            coordinator_url=coord.url,
            token=coord.issue_token("enroll"),
            mdns=False,
            settings={"identity_key": device_uri},
        )
        agent.start()  # `aeamc-agent init` generated the device key in the token
        assert agent.device_id == device_id_for(Ed25519HsmSigner(device_uri).public_key)
        assert not (agent.state_dir / "identity.key").exists()
        agent.wait_status(lambda s: s["coordinator"]["state"] == "active")

        client = coord.token("client")
        status, body = coord.request("POST", "/v1/tasks", TASK, token=client)
        assert status == 202, body
        task_id = body["task_id"]

        def done() -> dict[str, Any] | None:
            view = coord.request("GET", f"/v1/tasks/{task_id}", token=client)[1]
            proofs = view.get("proofs", [])
            ok = (
                view["state"] == "completed"
                and len(proofs) == 1
                and proofs[0]["spot_check"] == "passed"
                and proofs[0]["device_id"] == agent.device_id
                and proofs[0]["block_height"] is not None
            )
            return view if ok else None

        coord.wait_for(done, timeout=40)

        def anchored() -> dict[str, Any] | None:
            status = coord.request("GET", "/v1/status", token=coord.token("operator"))[1]
            a = status["anchoring"]
            return a if a["blocks_anchored"] >= 1 else None

        with miner(anvil, 0.15):
            anchoring = coord.wait_for(anchored, timeout=40)
        assert anchoring["state"] == "running" and anchoring["embedded"] is False
    finally:
        if agent is not None:
            agent.close()
        coord.stop()
