"""The running coordinator: storage, HTTP server and background loops, started and
stopped together."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from aeamc.shared.identity import Signer
from aeamc.shared.tasks.registry import discover

from .anchoring.service import AnchoringService
from .api import build_app
from .config import CoordinatorConfig
from .db import Database
from .discovery import Discovery
from .peers import AgentClient
from .scheduler import Scheduler
from .service import Coordinator, wait_event
from .spotchecks import SpotChecker

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 3600


class CoordinatorService:
    def __init__(self, config: CoordinatorConfig, signer: Signer) -> None:
        self.config = config
        self.db = Database(config.db_path)
        self.coordinator = Coordinator(config, signer, self.db, discover())
        self.client = AgentClient(timeout_s=config.scheduler.push_timeout_s)
        self.scheduler = Scheduler(self.coordinator, self.client)
        self.spot_checker = SpotChecker(self.coordinator, self.client)
        self.anchoring = AnchoringService(config, self.coordinator)
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self.port = 0
        self.discovery: Discovery | None = None

    async def start(self) -> None:
        self.db.open()
        self.coordinator.verifier.start()
        await self.coordinator.load()
        await self.client.start()
        self._runner = web.AppRunner(build_app(self.coordinator), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.config.server.host, self.config.server.port)
        await site.start()
        server = site._server  # aiohttp keeps the bound sockets here
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.server.port
        loops = {
            "scheduler": self.scheduler.run(),
            "blocks": self._block_loop(),
            "spot-checks": self.spot_checker.run(),
            "maintenance": self._maintenance_loop(),
        }
        self._tasks = [asyncio.create_task(coro, name=name) for name, coro in loops.items()]
        await self.anchoring.start()
        if self.config.server.mdns:
            self.discovery = Discovery(self.coordinator, self.port)
            await self.discovery.start()
        log.info(
            "coordinator %s listening on %s:%d",
            self.coordinator.coordinator_id,
            self.config.server.host,
            self.port,
        )

    async def stop(self) -> None:
        if self.discovery is not None:
            await self.discovery.stop()
            self.discovery = None
        for task in self._tasks:
            # Cancel until it is really done: one cancel can be absorbed by a task that
            # was just completing an inner wait.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=1.0)
        self._tasks = []
        await self.anchoring.stop()
        await self.scheduler.drain()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.client.close()
        self.coordinator.verifier.stop()
        self.db.close()

    async def _block_loop(self) -> None:
        c = self.coordinator
        interval = self.config.blocks.interval_s
        while True:
            await wait_event(c.wake_blocks, interval)
            try:
                while await c.form_block() is not None:
                    if c.unblocked < self.config.blocks.max_receipts:
                        break
            except Exception:
                log.exception("forming a microblock failed")

    async def _maintenance_loop(self) -> None:
        while True:
            try:
                purged = await self.coordinator.purge_telemetry()
                if purged:
                    log.info("purged %d heartbeats past retention", purged)
            except Exception:
                log.exception("maintenance failed")
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
