"""What anchoring looks like from outside: the last round's findings, the status view and
the log.

``/v1/status``, ``chain status``, the metrics and the alerts read :func:`anchoring_status`;
it answers from stored data and the last round only, so it never waits on the chain.
Every anchoring module logs under :data:`LOGGER`, one name for the whole lifecycle.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aeamc.shared.anchoring import age_s

from . import store
from .store import Target

if TYPE_CHECKING:
    from ..config import ChainConfig
    from ..groupcommit import GroupCommit

#: The logger name of every anchoring step, as operators filter the log on it.
LOGGER = "aeamc.coordinator.anchoring.service"
log = logging.getLogger(LOGGER)
#: The wallet's burn is its balance's slope over this window (Prometheus: ``deriv(…[6h])``).
BURN_WINDOW_S = 6 * 3600
#: At most one balance sample a minute is kept for the burn.
BURN_SAMPLE_MS = 60_000
EMBEDDED_NOTE = (
    "embedded in-process chain, started with the first microblock: anchors only prove "
    "something inside this process and are lost when the coordinator stops; set "
    "chain.rpc_url to anchor on a real chain"
)


@dataclass
class ChainStatus:
    """What the last round learnt; served by ``/v1/status`` without touching the chain."""

    state: str = "starting"
    chain_id: int | None = None
    contract: str | None = None
    wallet: str | None = None
    balance_wei: int | None = None
    head: int | None = None
    submitter: bool | None = None
    rpc_errors: int = 0
    last_error: str | None = None
    last_action: str | None = None
    counters: dict[str, int] = field(default_factory=dict)
    #: ``(ms, wei)``: the balance over the last :data:`BURN_WINDOW_S`, one sample a minute.
    balance_samples: deque[tuple[int, int]] = field(default_factory=deque)

    def observe_balance(self, now_ms: int, balance_wei: int) -> None:
        """Record the wallet's balance as read from the chain."""
        self.balance_wei = balance_wei
        samples = self.balance_samples
        if not samples or now_ms - samples[-1][0] >= BURN_SAMPLE_MS:
            samples.append((now_ms, balance_wei))
        while samples and now_ms - samples[0][0] > BURN_WINDOW_S * 1000:
            samples.popleft()

    def burn_wei_per_s(self) -> float | None:
        """Wei spent a second: minus the least-squares slope of the balance samples (what
        Prometheus's ``deriv`` computes); ``None`` before two samples. Negative when the
        wallet was refilled more than spent."""
        samples = self.balance_samples
        if len(samples) < 2:
            return None
        n = len(samples)
        t0 = samples[0][0]
        ts = [(t - t0) / 1000 for t, _ in samples]
        mean_t = sum(ts) / n
        mean_b = sum(b for _, b in samples) / n
        var = sum((t - mean_t) ** 2 for t in ts)
        if var == 0:
            return None
        cov = sum((t - mean_t) * (b - mean_b) for t, (_, b) in zip(ts, samples, strict=True))
        return -cov / var

    def count(self, name: str) -> None:
        """Add one to counter ``name`` (created at 1)."""
        self.counters[name] = self.counters.get(name, 0) + 1

    def fail(self, message: str, *, rpc: bool, connected: bool) -> None:
        """Record a failed round: ``rpc`` for a chain that did not answer (counted), else a
        configuration or contract refusal. A message is logged only when it changes, so a
        long outage does not flood the log."""
        if rpc:
            self.rpc_errors += 1
        if message != self.last_error:
            log.warning("anchoring: %s", message)
        self.last_error = message
        if not connected:
            self.state = "error" if not rpc else "unreachable"
        elif rpc:
            self.state = "rpc_errors"


async def anchoring_status(
    db: GroupCommit,
    cc: ChainConfig,
    status: ChainStatus,
    clock: Callable[[], int],
    *,
    rpc_label: str | None,
    target: Target | None,
) -> dict[str, Any]:
    """Anchoring at a glance, from stored data and the last round (no chain calls).

    The keys are an interface: metrics, alerts and the dashboard read them by name.
    """
    counts = await db.read(lambda d: store.summary(d, target))
    last = counts.pop("last_final_anchor", None)
    age = None
    if last is not None and last["final_at"] is not None:
        age = age_s(clock(), last["final_at"])
    out: dict[str, Any] = {
        "enabled": cc.enabled,
        "state": status.state,
        "embedded": not cc.rpc_url,
        "rpc": rpc_label,
        "chain_id": status.chain_id,
        "contract": status.contract,
        "wallet": status.wallet,
        "wallet_submitter": status.submitter,
        "balance_wei": status.balance_wei,
        "wallet_burn_wei_per_s": status.burn_wei_per_s(),
        "head": status.head,
        "confirmations": cc.confirmations,
        "anchor_interval_s": cc.anchor_interval_s,
        "last_final_anchor": last,
        "last_final_anchor_age_s": age,
        "rpc_errors": status.rpc_errors,
        "last_error": status.last_error,
        "last_action": status.last_action,
        "counters": dict(status.counters),
        **counts,
    }
    if out["embedded"]:
        out["note"] = EMBEDDED_NOTE
    return out
