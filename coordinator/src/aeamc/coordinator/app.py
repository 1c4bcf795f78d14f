"""The running coordinator: storage, HTTPS server and background loops, started and
stopped together."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from aiohttp import web

from aeamc.shared.identity import Signer, device_id_for
from aeamc.shared.runtime import tls
from aeamc.shared.runtime.edge import EdgeLimits, GuardedSite
from aeamc.shared.tasks.registry import discover

from .anchoring.service import AnchoringService
from .api import METRICS_KEY, build_app
from .ca import CertificateAuthority, ServerFiles, host_names, issue_server_files
from .certs import DeviceCertificates
from .cluster import Leadership, RelayListener, leader_url, node_name
from .config import CoordinatorConfig
from .discovery import Discovery
from .follower import Follower
from .forwarding import ClusterRelay, Forwarding, new_relay_address, publish_relay
from .leadership import DatabaseLeaderLock, LeaderLock
from .peers import AgentClient
from .scheduler import Scheduler
from .service import Coordinator, wait_event
from .spotchecks import SpotChecker
from .storage import is_postgresql, open_database
from .store import devices as device_rows
from .store import leaders as leader_rows
from .updates.repository import Repository
from .updates.rollouts import Rollouts

log = logging.getLogger(__name__)

MAINTENANCE_INTERVAL_S = 3600
#: After a failed attempt to lead, a worker waits this long (doubling, up to the maximum)
#: before it tries again; other workers may take the lead meanwhile.
LEAD_RETRY_S = 1.0
LEAD_RETRY_MAX_S = 60.0
PRUNE_CHANGES_INTERVAL_S = 30


class CoordinatorService:
    """One process of the coordinator: it serves the API and, while it holds the leader
    lock (leadership.py), runs what must run once. ``workers`` > 1: one of several such
    processes on the same state directory and port (``listen``: this process's
    ``SO_REUSEPORT`` socket, workers.py); the others forward to the leader what only it
    answers (forwarding.py) and follow each other's writes (follower.py)."""

    def __init__(
        self,
        config: CoordinatorConfig,
        signer: Signer,
        *,
        workers: int = 1,
        listen: socket.socket | None = None,
    ) -> None:
        self.config = config
        self.workers = workers
        self._listen = listen
        self.db = open_database(config.database, config.db_path, shared=workers > 1)
        coordinator_id = device_id_for(signer.public_key)
        self.ca, created = CertificateAuthority.ensure(
            config.state_dir, config.ca_key, coordinator_id
        )
        if created:
            log.warning(
                "this state directory had no certificate authority; created one, fingerprint "
                "%s. Agents enrolled before learn it at their next enrollment: compare it with "
                "`aeamc-agent status` on each device",
                self.ca.fingerprint,
            )
        self.server_files = self._issue_server_files(coordinator_id)
        self.server_ssl = tls.server_context(
            self.server_files.cert_file, self.server_files.key_file, ca_pem=self.ca.cert_pem
        )
        self.client_ssl = tls.client_context(
            ca_pem=self.ca.cert_pem,
            cert_file=self.server_files.cert_file,
            key_file=self.server_files.key_file,
        )
        certs = DeviceCertificates(self.ca, self.db, config.tls.device_cert_lifetime_s)
        self.coordinator = Coordinator(config, signer, self.db, discover(), certs=certs)
        self.client = AgentClient(
            timeout_s=config.scheduler.push_timeout_s, ssl_context=self.client_ssl
        )
        self.scheduler = Scheduler(self.coordinator, self.client)
        self.spot_checker = SpotChecker(self.coordinator, self.client)
        self.anchoring = AnchoringService(config, self.coordinator)
        self.rollouts = Rollouts(self.coordinator, update_repository(config))
        self.coordinator.rollouts = self.rollouts
        self.coordinator.add_status_section(self.anchoring)
        self.coordinator.add_status_section(self.rollouts)
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._serving_tasks: list[asyncio.Task[Any]] = []
        self.port = 0
        self.discovery: Discovery | None = None
        #: Several nodes on one PostgreSQL database (cluster.py), or one host.
        self.clustered = is_postgresql(config.database)
        self.lock: LeaderLock | DatabaseLeaderLock = (
            DatabaseLeaderLock(config.database.url)
            if self.clustered
            else LeaderLock(config.state_dir)
        )
        self.leadership = Leadership(self.db, node_name(config.cluster), self.clustered)
        self.coordinator.add_status_section(self.leadership)
        self.forwarding: Forwarding | None = None
        #: The leader's relay socket, while this worker leads (several workers).
        self._relay: web.UnixSite | None = None
        #: The leader's relay port, while this node leads (several nodes).
        self.relay_listener: RelayListener | None = None
        self.follower: Follower | None = None
        if workers > 1 or self.clustered:
            cluster = None
            if self.clustered:
                s, cc = config.server, config.cluster
                self.relay_listener = RelayListener(
                    self.coordinator.coordinator_id,
                    self.db,
                    self.server_ssl,
                    host=s.host,
                    address=cc.relay_address or s.advertise_address,
                    port=cc.relay_port,
                )
                cluster = ClusterRelay(
                    lambda: leader_url(self.db), self.client_ssl, self.relay_listener
                )
            self.forwarding = Forwarding(
                config.state_dir, lambda: self.leading, config.server.max_wait_s, cluster=cluster
            )
            self.follower = Follower(self.coordinator)

    @property
    def leading(self) -> bool:
        """Whether this process runs the leader's duties (set once they have all started)."""
        return self.leadership.leading

    async def start(self) -> None:
        """Serve the API; lead now if no other process does, else take over when the
        leader ends."""
        self.db.open()
        self.coordinator.verifier.start()
        await self.coordinator.load()
        s = self.config.server
        self._runner = web.AppRunner(
            build_app(self.coordinator, self.forwarding),
            access_log=None,
            keepalive_timeout=s.keepalive_timeout_s,
        )
        await self._runner.setup()
        site = GuardedSite(
            self._runner,
            host=s.host,
            port=s.port,
            sock=self._listen,
            ssl_context=self.server_ssl,
            limits=EdgeLimits(s.header_timeout_s, s.max_connections_per_address),
        )
        await site.start()
        server = site._server  # aiohttp keeps the bound sockets here
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else self.config.server.port
        self._serving_tasks.append(
            asyncio.create_task(self._certificate_loop(), name="server-certificate")
        )
        if self.follower is not None:
            self._serving_tasks.append(asyncio.create_task(self.follower.run(), name="follower"))
        shared = self._runner.app[METRICS_KEY].shared
        if shared is not None:
            self._serving_tasks.append(asyncio.create_task(shared.run(), name="metrics"))
        locked = await asyncio.to_thread(self.lock.try_acquire)
        if locked and self.forwarding is None:
            await self._lead()  # one process: it leads, or it does not run
        elif not locked or not await self._lead_or_step_down():
            log.info("another worker leads; serving device requests and relaying the rest")
            # After a failed attempt of its own, this worker lets another try first.
            wait_s = LEAD_RETRY_S if locked else 0.0
            self._serving_tasks.append(
                asyncio.create_task(self._take_over_when_free(wait_s), name="leadership")
            )
        log.info(
            "coordinator %s listening on https://%s:%d (TLS 1.3; CA fingerprint %s)",
            self.coordinator.coordinator_id,
            self.config.server.host,
            self.port,
            self.ca.fingerprint,
        )

    async def _take_over_when_free(self, wait_s: float = 0.0) -> None:
        """Wait for the lock and lead; after a failed attempt, wait longer each time
        before the next (serving devices all along)."""
        await asyncio.sleep(wait_s)
        retry_s = LEAD_RETRY_S
        while True:
            await self.lock.acquire()
            log.info("this worker now leads the coordinator")
            if await self._lead_or_step_down(reload=True):
                return
            await asyncio.sleep(retry_s)
            retry_s = min(retry_s * 2, LEAD_RETRY_MAX_S)

    async def _lead_or_step_down(self, *, reload: bool = False) -> bool:
        """With the lock held: start the leader's duties (``reload``: after reading afresh
        everything the old leader committed). If that fails, undo what started and give
        the lock up, so the service is not left with a leader that does not lead while
        this worker goes on serving devices; returns whether it leads."""
        try:
            if reload:
                await self.coordinator.load()
            await self._lead()
            return True
        except Exception:
            log.exception("starting the leader's duties failed; giving the lead up")
            await self._step_down()
            return False

    async def _step_down(self, *, stopping: bool = False) -> None:
        """End whatever part of the leader's duties runs and release the lock; when
        ``stopping``, the agent client and the lock are left to ``stop``, which ends them
        last (requests still being answered may use the one, and no other worker may lead
        before they are)."""
        self.leadership.leading = False
        self.db.fence = None
        if self.discovery is not None:
            await self.discovery.stop()
            self.discovery = None
        await _cancel_all(self._tasks)
        self._tasks = []
        await self.anchoring.stop()
        await self.scheduler.drain()
        if self._relay is not None:
            await self._relay.stop()
            self._relay = None
        if self.relay_listener is not None:
            await self.relay_listener.close()
        if not stopping:
            await self.client.close()
            self.lock.release()

    async def _lead(self) -> None:
        """Start the duties only one process may run, in the order a cold start does."""
        if self.clustered:
            # From here on each write checks first that this node still holds the lock.
            self.db.fence = lambda: self.lock.fence
        await self.rollouts.load()
        # A database restored from a backup may predate some erasures: redo them first.
        await self.coordinator.privacy.reapply_erasures()
        await self.client.start()
        if self.workers > 1:
            assert self._runner is not None
            address = new_relay_address()
            self._relay = web.UnixSite(self._runner, address)
            await self._relay.start()
            publish_relay(self.config.state_dir, address)
        if self.relay_listener is not None:
            assert self._runner is not None
            url = await self.relay_listener.open(self._runner)
            node, now = self.leadership.node, self.coordinator.clock()
            self.leadership.term = await self.db.write(
                lambda db: leader_rows.begin_term(db, node, url, now)
            )
            log.info("node %s leads, term %d", node, self.leadership.term)
        loops = {
            "scheduler": self.scheduler.run(),
            "blocks": self._block_loop(),
            "spot-checks": self.spot_checker.run(),
            "maintenance": self._maintenance_loop(),
            "update-metadata": self.rollouts.keep_fresh(),
            "device-changes": self._prune_changes_loop(),
            "leader-lock": self._watch_lock(),
        }
        self._tasks = [asyncio.create_task(coro, name=name) for name, coro in loops.items()]
        await self.scheduler.resume_offers()
        await self.anchoring.start()
        if self.config.server.mdns:
            self.discovery = Discovery(self.coordinator, self.port)
            await self.discovery.start()
        self.leadership.leading = True

    async def _watch_lock(self) -> None:
        """Step down as soon as the lock is lost (the database ended its session), and
        wait to lead again, serving devices meanwhile."""
        await self.lock.lost()
        log.error("lost the leader lock: stepping down; another node may lead now")

        async def step_down_and_wait() -> None:
            await self._step_down()
            await self._take_over_when_free(LEAD_RETRY_S)

        self._serving_tasks.append(asyncio.create_task(step_down_and_wait(), name="leadership"))

    def _issue_server_files(self, coordinator_id: str) -> ServerFiles:
        s = self.config.server
        extra = f"{self.config.tls.server_names},{self.config.cluster.relay_address}"
        names = host_names(s.host, s.advertise_address, extra)
        return issue_server_files(
            self.ca,
            self.config.state_dir,
            coordinator_id,
            names=names,
            lifetime_s=self.config.tls.server_cert_lifetime_s,
        )

    def renew_server_certificate(self, now_ms: int) -> bool:
        """Re-issue our certificate once two thirds of its lifetime passed; new handshakes
        (served and made) use it at once, open connections keep the old one."""
        if not tls.renewal_due(self.server_files.cert, now_ms):
            return False
        self.server_files = self._issue_server_files(self.coordinator.coordinator_id)
        for ctx in (self.server_ssl, self.client_ssl):
            ctx.load_cert_chain(self.server_files.cert_file, self.server_files.key_file)
        log.info("renewed the coordinator's TLS certificate")
        return True

    async def stop(self) -> None:
        await self._step_down(stopping=True)
        await _cancel_all(self._serving_tasks)
        self._serving_tasks = []
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.forwarding is not None:
            await self.forwarding.close()
        await self.client.close()
        self.coordinator.verifier.stop()
        self.db.close()
        self.lock.release()

    async def _block_loop(self) -> None:
        c = self.coordinator
        interval = self.config.blocks.interval_s
        while True:
            await wait_event(c.wake_blocks, interval)
            try:
                # Another block at once while the last one was full: receipts are waiting
                # (counted in other worker processes too, which this one cannot see).
                while await c.blocks.form_block() is not None:
                    if not c.blocks.last_block_full:
                        break
            except Exception:
                log.exception("forming a microblock failed")

    async def _maintenance_loop(self) -> None:
        # Expired pending identities are refused as soon as they expire (service.py) and
        # deleted here, at least once per pending TTL, so a short TTL is swept as often.
        interval = min(MAINTENANCE_INTERVAL_S, self.config.enrollment.pending_ttl_s)
        while True:
            try:
                purged = await self.coordinator.maintenance.purge_telemetry()
                if purged:
                    log.info("purged %d heartbeats past retention", purged)
                forgotten = await self.coordinator.maintenance.purge_candidates()
                if forgotten:
                    log.info("deleted %d mDNS candidates past retention", forgotten)
                await self.coordinator.enrollment.expire_pending()
            except Exception:
                log.exception("maintenance failed")
            await asyncio.sleep(interval)

    async def _certificate_loop(self) -> None:
        # Every process renews the certificate it serves with (the CA is in the state
        # directory); checked as often as maintenance runs.
        interval = min(MAINTENANCE_INTERVAL_S, self.config.enrollment.pending_ttl_s)
        while True:
            try:
                self.renew_server_certificate(self.coordinator.clock())
            except Exception:
                log.exception("renewing the server certificate failed")
            await asyncio.sleep(interval)

    async def _prune_changes_loop(self) -> None:
        # The device change log (follower.py) grows with every heartbeat: keep its tail.
        while True:
            try:
                await self.db.write(device_rows.prune_changes)
            except Exception:
                log.exception("pruning the device change log failed")
            await asyncio.sleep(PRUNE_CHANGES_INTERVAL_S)


async def _cancel_all(tasks: list[asyncio.Task[Any]]) -> None:
    for task in tasks:
        # Cancel until it is really done: one cancel can be absorbed by a task that was
        # just completing an inner wait.
        while not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)


def update_repository(config: CoordinatorConfig) -> Repository:
    """The TUF repository of agent releases in the state directory (docs/updates.md)."""
    return Repository(config.state_dir / "updates", config.updates, state_dir=config.state_dir)
