"""Connecting at start-up: the wallet, the chain and contract checks, and reconciling what
is stored with that chain (anchors sent elsewhere, the next nonce).

Nothing is sent here. Anchors stored for another chain or contract give their blocks back
(``store.release_foreign``); the stored next nonce is compared with the chain's pending
count, and the chain wins: every stored anchor carries its own nonce.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aeamc.shared.anchoring import Policy, stored_nonce_stale

from . import store
from .calls import ChainCalls
from .session import Session
from .status import EMBEDDED_NOTE, LOGGER, ChainStatus
from .store import Target
from .wallet import TxSigner, WalletError, ensure_wallet

if TYPE_CHECKING:
    from ..config import CoordinatorConfig
    from ..groupcommit import GroupCommit
    from .chain import Chain

log = logging.getLogger(LOGGER)


class NotReady(Exception):
    """Anchoring cannot run as configured yet (no contract, wrong chain); not transient."""


async def connect(
    config: CoordinatorConfig,
    db: GroupCommit,
    *,
    clock: Callable[[], int],
    calls: ChainCalls,
    status: ChainStatus,
    policy: Policy,
) -> Session:
    """Reach the chain, load the wallet and contract, and reconcile what is stored.

    Raises :class:`NotReady` for what only the operator can fix; any other exception is a
    chain that did not answer, and the caller tries again.
    """
    cc = config.chain
    chain, wallet = await calls.call(
        lambda: _connect_sync(config, policy, status), timeout=max(60.0, cc.rpc_timeout_s)
    )
    target = Target(chain.chain_id(), chain.address, chain.embedded, wallet.address)
    now = clock()
    released = await db.write(lambda d: store.release_foreign(d, target, now))
    if released:
        log.warning("%d microblocks will be anchored again on %s", released, chain.label)
    stored = await db.read(lambda d: store.stored_next_nonce(d, target))
    latest, pending = await calls.call(
        lambda: (chain.tx_count(wallet.address), chain.tx_count(wallet.address, "pending"))
    )
    if stored_nonce_stale(stored, pending):
        # The chain is the truth; the stored anchors carry their own nonces.
        log.warning(
            "stored next nonce %d, chain says %d (latest %d): reconciled with the chain",
            stored,
            pending,
            latest,
        )
    session = Session(chain, wallet, target, db, clock, calls, status, policy, cc)
    status.state, status.chain_id, status.contract, status.wallet = (
        "running",
        target.chain_id,
        chain.address,
        wallet.address,
    )
    if chain.embedded:
        log.warning("%s (chain id %d, contract %s)", EMBEDDED_NOTE, target.chain_id, chain.address)
    else:
        log.info(
            "anchoring on %s, chain id %d, contract %s, wallet %s, %d confirmations",
            chain.label,
            target.chain_id,
            chain.address,
            wallet.address,
            cc.confirmations,
        )
    return session


def _connect_sync(
    config: CoordinatorConfig, policy: Policy, status: ChainStatus
) -> tuple[Chain, TxSigner]:
    """On the chain thread: the wallet (created if missing), then the chain — the embedded
    one started, funded and given a contract, or the configured one checked."""
    from .chain import Chain, ChainError

    cc = config.chain
    try:
        wallet, created = ensure_wallet(config.wallet_ref)
    except WalletError as exc:
        raise NotReady(str(exc)) from None
    if created:
        log.info("created anchoring wallet %s", wallet.address)
    if not cc.rpc_url:
        chain = Chain.start_embedded()
        chain.fund(wallet.address)
        chain.deploy(wallet, cap_wei=policy.max_fee_per_gas)
        status.submitter = True
        return chain, wallet
    chain = Chain.connect(cc.rpc_url, cc.rpc_timeout_s)
    chain_id = chain.chain_id()
    if cc.chain_id and chain_id != cc.chain_id:
        raise NotReady(f"{chain.label} is chain {chain_id}, chain.chain_id says {cc.chain_id}")
    if not cc.contract:
        raise NotReady("chain.contract is not set: run `aeamc-coordinator chain deploy`")
    if not chain.has_code(cc.contract):
        raise NotReady(f"no contract at {cc.contract} on chain {chain_id}")
    chain.bind(cc.contract)
    try:
        status.submitter = chain.is_submitter(wallet.address)
    except (ChainError, ValueError):
        status.submitter = None
    if status.submitter is False:
        log.error("wallet %s is not a submitter of %s", wallet.address, cc.contract)
    return chain, wallet
