"""What the HTTP API and the status document read from a running agent.

``daemon.Agent`` has all of this; ``server``, ``status`` and ``admission`` are typed
against this protocol instead of the daemon, so the daemon imports them and never the
other way round.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from aeamc.shared.identity import SigningKey
    from aeamc.shared.messages import Assignment, Capabilities
    from aeamc.shared.runtime.pkcs11 import Ed25519HsmSigner

    from .config import AgentConfig
    from .link import CoordinatorLink
    from .locator import CoordinatorLocator
    from .metrics import AgentMetrics
    from .monitor import EnergyMonitor
    from .outbox import Outbox
    from .runner import TaskRunner
    from .sender import OutboxSender
    from .telemetry import TelemetrySource
    from .tls import AgentTls
    from .traces import TraceStore
    from .workqueue import WorkQueue


class AgentView(Protocol):
    """The running agent's parts and answers that its HTTP API and status report use."""

    config: AgentConfig
    key: SigningKey | Ed25519HsmSigner
    device_id: str
    started_ms: int
    shutting_down: bool
    link: CoordinatorLink | None
    runner: TaskRunner | None
    sender: OutboxSender | None
    updater: Any
    metrics: AgentMetrics
    monitor: EnergyMonitor
    source: TelemetrySource
    locator: CoordinatorLocator
    tls: AgentTls
    queue: WorkQueue
    outbox: Outbox
    traces: TraceStore
    clock_ms: Callable[[], int]

    @property
    def running(self) -> bool: ...

    @property
    def pinned_coordinator_id(self) -> str | None: ...

    def refusal_reason(self) -> str | None: ...

    def accept(self, a: Assignment) -> str: ...

    def metrics_gauges(self) -> dict[str, tuple[str, float]]: ...

    def capabilities(self) -> Capabilities: ...

    def endpoint(self) -> str | None: ...
