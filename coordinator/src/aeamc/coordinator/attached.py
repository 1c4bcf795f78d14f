"""What the process running the coordinator attaches to its ``Context`` from outside the
services: sections of the status summary owned by other components (anchoring, fleet
updates) and the fleet-update view the services consult.

These components are built after the ``Coordinator`` (they take it as their host), so
they are attached to it rather than passed to its constructor: each by one typed call,
``Context.add_status_section``, or by setting ``Context.rollouts``.
"""

from __future__ import annotations

from typing import Any, Protocol

#: The summary section of the anchoring service (anchoring/service.py).
ANCHORING = "anchoring"
#: The summary section of fleet updates (updates/rollouts.py).
UPDATES = "updates"


class StatusSection(Protocol):
    """A named section of ``GET /v1/status``, computed by the component that owns it."""

    @property
    def status_name(self) -> str:
        """The section's key in the status summary."""
        ...

    async def status(self) -> dict[str, Any]:
        """The section's current value (JSON-serialisable)."""
        ...


class RolloutsView(Protocol):
    """What the services need of fleet updates: reloading their in-memory view after a
    change made behind their back (a device's erasure deletes its update reports)."""

    async def load(self) -> None: ...
