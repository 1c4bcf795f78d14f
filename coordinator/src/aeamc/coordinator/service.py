"""The Microblock Coordinator's composition root: one object that builds every service
on a shared ``Context`` and wires them together.

Each service holds one concern (tokens.py, enrollment.py, heartbeats.py, flags.py,
content.py, tasks.py, faults.py, ingestion.py, settlement.py, verdicts.py, blocks.py,
privacy.py, devices.py, maintenance.py, status.py). Each public coroutine of a service
validates its input with the pure protocol core first (bad input changes nothing), then
performs one writer transaction, and only then updates the in-memory device view and
answers. A service decides; the store layer (``store/``, one module per table group)
writes: inside its one transaction a service calls store functions with the transaction
handle, and after the commit it tells the live registry (``store.registry.DeviceRegistry``)
what changed. The HTTP layer (``api.py``) and the background loops (``scheduler.py``,
``spotchecks.py``) call the services through this root.
"""

from __future__ import annotations

from aeamc.shared.runtime.clock import now_ms

from .blocks import BlockService
from .content import ContentService
from .context import Context, wait_event
from .devices import DeviceService
from .enrollment import EnrollmentService
from .faults import ChunkFaults
from .flags import FlagService
from .heartbeats import HeartbeatService
from .ingestion import ProofIngestion
from .maintenance import Maintenance
from .privacy import PrivacyService
from .settlement import Settlement
from .status import StatusService
from .tasks import TaskService
from .tokens import TokenInfo, TokenService
from .verdicts import VerdictService

__all__ = ["Context", "Coordinator", "TokenInfo", "now_ms", "wait_event"]


class Coordinator(Context):
    """The shared context plus every service, built once per process."""

    def _build_services(self) -> None:
        """Build every service on this context, each given the services it calls."""
        self.tokens = TokenService(self)
        self.flags = FlagService(self)
        self.settlement = Settlement(self)
        self.enrollment = EnrollmentService(self, self.tokens)
        self.heartbeats = HeartbeatService(self, self.flags)
        self.content = ContentService(self)
        self.tasks = TaskService(self, self.content)
        self.faults = ChunkFaults(self)
        self.ingestion = ProofIngestion(self, self.settlement)
        self.verdicts = VerdictService(self, self.settlement)
        self.blocks = BlockService(self, self.settlement)
        self.privacy = PrivacyService(self, self.settlement, self.blocks)
        self.fleet = DeviceService(self, self.settlement)
        self.maintenance = Maintenance(self)
        self.status = StatusService(self)

    async def load(self) -> None:
        """Read what the services keep in memory: devices, flags, certificate state."""
        await self.load_devices()
        await self.flags.load()
        if self.certs is not None:
            await self.certs.load()
