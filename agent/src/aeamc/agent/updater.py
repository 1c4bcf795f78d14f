"""Fleet updates, the daemon's side: find, verify and install a release, then hand over.

Every ``updates.check_interval_s`` the daemon refreshes the coordinator's TUF metadata
(python-tuf's ngclient: signatures, thresholds, versions that only go up, expiry) and
looks at its flags: a release ``V`` is for this device when the coordinator turns
``release-V`` on for it (SPEC §10 cohort), ``V`` is newer than what it runs and has not
failed here. The release's manifest and wheels are then downloaded through ngclient,
which checks each file's length and hash against the signed targets metadata, and
installed into a new slot (slots.py). Nothing about the running agent changes until
the runner is idle — like balena's update lock, an update never interrupts a task:
queued work waits, and the daemon exits with ``EX_RESTART`` for the launcher to start
the release on trial.

All HTTP goes through the agent's own coordinator client (the same session, URL and
transport as heartbeats), bridged from ngclient's synchronous fetcher to the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import shutil
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from tuf.api.exceptions import (
    DownloadError,
    DownloadHTTPError,
    DownloadLengthMismatchError,
    RepositoryError,
)
from tuf.ngclient import FetcherInterface
from tuf.ngclient import Updater as TufUpdater

from aeamc.shared.identity import Signer
from aeamc.shared.messages import sign
from aeamc.shared.releases import (
    REFUSED,
    UPDATED,
    UpdateReport,
    choose_release,
    manifest_path,
    target_path,
)

from . import __version__
from .backoff import jittered
from .client import CoordinatorClient, Unreachable
from .config import AgentConfig
from .launcher import EX_RESTART
from .locator import CoordinatorLocator
from .slots import COMPLETE, Slots

log = logging.getLogger(__name__)

METADATA_PATH = "/v1/updates/metadata/"
TARGETS_PATH = "/v1/updates/targets/"
REPORTS_PATH = "/v1/updates/reports"
#: Largest file the updater downloads (a release is two small wheels and a manifest).
MAX_FILE_BYTES = 64 * 1024 * 1024
IDLE_POLL_S = 0.2


NO_REPOSITORY = "the coordinator offers no updates (no update repository)"


class NoRepository(Exception):
    """The coordinator has no TUF repository (``release init`` was never run there)."""


class Updater:
    def __init__(
        self,
        *,
        config: AgentConfig,
        key: Signer,
        device_id: str,
        client: CoordinatorClient,
        locator: CoordinatorLocator,
        flags: Callable[[], dict[str, bool]],
        enrolled: Callable[[], bool],
        is_idle: Callable[[], bool],
        hold_work: Callable[[], None],
        restart: Callable[[int], None],
        clock_ms: Callable[[], int],
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self.config = config
        self.key = key
        self.device_id = device_id
        self.client = client
        self.locator = locator
        self.flags = flags
        self.enrolled = enrolled
        self.is_idle = is_idle
        self.hold_work = hold_work
        self.restart = restart
        self.clock_ms = clock_ms
        self.on_change = on_change
        self.slots = Slots(config.state_dir)
        self.metadata_dir = config.state_dir / "updates" / "metadata"
        self.state = "idle"
        self.last_check_ms: int | None = None
        self.last_error: str | None = None
        self.trusted: dict[str, int] = {}
        self.offered: str | None = None
        #: Releases whose files failed verification in this run: not fetched again.
        self.refused: dict[str, str] = {}
        self._confirmed = False
        self._delivery: asyncio.Task[None] | None = None

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        # Reports left by the launcher (a rollback) go out as soon as the device is enrolled,
        # not an interval later.
        while not self.enrolled():
            await asyncio.sleep(IDLE_POLL_S)
        await self._safely(self.deliver_reports)
        while True:
            await asyncio.sleep(jittered(self.config.update_check_interval_s, 0.1, random.uniform))
            await self._safely(self.deliver_reports)
            await self._safely(self.check)

    async def _safely(self, step: Callable[[], Awaitable[None]]) -> None:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must not end update checks for good
            self._error(f"internal error: {exc}")
            log.exception("update check failed")

    def heartbeat_accepted(self) -> None:
        """The coordinator accepted a heartbeat: a release on trial is healthy."""
        if self._confirmed:
            return
        # Trials begin only when a daemon starts: looking once per process is enough.
        self._confirmed = True
        trial = self.slots.load().trial
        if trial is None or trial.version != __version__:
            return
        self.slots.confirm(__version__)
        previous = trial.previous or "the base installation"
        self.slots.add_report(
            __version__, UPDATED, f"from {previous}", __version__, self.clock_ms()
        )
        log.info("release %s is healthy: confirmed to the launcher", __version__)
        self._delivery = asyncio.get_running_loop().create_task(self._safely(self.deliver_reports))
        self.on_change()

    async def check(self) -> None:
        url = self.locator.url
        if url is None or not self.enrolled():
            return
        loop = asyncio.get_running_loop()
        fetcher = CoordinatorFetcher(self.client, loop, self.config.request_timeout_s)
        try:
            updater = await asyncio.to_thread(self._refresh, url, fetcher)
        except NoRepository:
            if self.last_error != NO_REPOSITORY:
                log.info("%s", NO_REPOSITORY)
            self._error(NO_REPOSITORY)
            return
        except Exception as exc:
            self._error(f"update metadata refused: {type(exc).__name__}: {exc}")
            log.warning("%s", self.last_error)
            return
        self.last_check_ms = self.clock_ms()
        self.last_error = None
        state = self.slots.load()
        if state.trial is not None:
            return  # this release has not confirmed its health yet
        release = choose_release(self.flags(), __version__, failed=[*state.failed, *self.refused])
        self.offered = release
        self.on_change()
        if release is None:
            return
        log.info("release %s is offered to this device; downloading it", release)
        self._set_state("downloading")
        try:
            await asyncio.to_thread(self._install, updater, release)
        except Exception as exc:
            self._set_state("idle")
            if _is_verification_error(exc):
                detail = f"verification failed: {type(exc).__name__}: {exc}"
                self.refused[release] = detail
                self.slots.add_report(release, REFUSED, detail, __version__, self.clock_ms())
                self._error(f"release {release} refused: {detail}")
                log.error("release %s refused, nothing installed: %s", release, detail)
                await self.deliver_reports()
            else:
                self._error(f"release {release} not installed: {type(exc).__name__}: {exc}")
                log.warning("%s; trying again later", self.last_error)
            return
        self._set_state("waiting_for_idle")
        while not self.is_idle():
            await asyncio.sleep(IDLE_POLL_S)
        self.hold_work()  # no yield since the idle check: no task can start now
        self.slots.request(release)
        self._set_state("restarting")
        log.info("release %s installed; restarting into it", release)
        self.restart(EX_RESTART)

    # -- TUF ---------------------------------------------------------------------------------

    def _refresh(self, url: str, fetcher: CoordinatorFetcher) -> Any:
        self.metadata_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        bootstrap = None
        if not (self.metadata_dir / "root.json").exists():
            bootstrap = self._bootstrap_root(url, fetcher)
        updater = TufUpdater(
            metadata_dir=str(self.metadata_dir),
            metadata_base_url=url.rstrip("/") + METADATA_PATH,
            target_base_url=url.rstrip("/") + TARGETS_PATH,
            fetcher=fetcher,
            bootstrap=bootstrap,
        )
        updater.refresh()
        # A read-only look at the versions now trusted, for status (ngclient has no API).
        trusted = updater._trusted_set
        self.trusted = {signed.type: signed.version for signed in trusted}
        return updater

    def _bootstrap_root(self, url: str, fetcher: CoordinatorFetcher) -> bytes:
        """The root to start from: configured, else the coordinator's v1 (pinned on first use)."""
        if self.config.update_root is not None:
            return self.config.update_root.read_bytes()
        try:
            root = fetcher.download_bytes(url.rstrip("/") + METADATA_PATH + "1.root.json", 512_000)
        except DownloadHTTPError as exc:
            if exc.status_code == 404:
                raise NoRepository from None
            raise
        log.warning("no TUF root configured: trusting the coordinator's root on first use")
        return root

    def _install(self, updater: Any, release: str) -> None:
        work = Path(tempfile.mkdtemp(prefix=".download-", dir=self._releases_dir()))
        try:
            manifest = self._download(updater, manifest_path(release), work)
            data = json.loads(manifest.read_bytes())
            wheels = data.get("wheels") if isinstance(data, dict) else None
            if data.get("version") != release or not isinstance(wheels, list) or not wheels:
                raise ValueError(f"the manifest of release {release} is not one")
            files = [self._download(updater, target_path(release, str(w)), work) for w in wheels]
            install_slot(self.slots, release, files)
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _download(self, updater: Any, path: str, work: Path) -> Path:
        info = updater.get_targetinfo(path)
        if info is None:
            raise LookupError(f"{path} is not in the signed targets metadata")
        name = path.rsplit("/", 1)[1]
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad file name {name!r}")
        return Path(updater.download_target(info, str(work / name)))

    def _releases_dir(self) -> Path:
        self.slots.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self.slots.dir

    # -- reports ------------------------------------------------------------------------------

    async def deliver_reports(self) -> None:
        url = self.locator.url
        if url is None:
            return
        for path, report in self.slots.reports():
            body = {
                "type": "update_report",
                "device_id": self.device_id,
                "release": report.get("release"),
                "version": report.get("version"),
                "outcome": report.get("outcome"),
                "detail": report.get("detail", ""),
                "timestamp": report.get("at_ms"),
            }
            try:
                message = sign(UpdateReport, body, self.key)
            except Exception as exc:
                log.error("dropping an update report that is not one (%s): %s", path.name, exc)
                path.unlink(missing_ok=True)
                continue
            try:
                reply = await self.client.post(url, REPORTS_PATH, message.to_dict())
            except Unreachable:
                return
            if (
                reply.status >= 500
                or reply.status in (408, 429)
                or reply.error_code
                in (
                    "not_enrolled",
                    "pending",
                )
            ):
                return  # kept: delivered once the coordinator can take it
            if reply.status != 202:
                log.warning(
                    "update report %s refused: HTTP %d %s",
                    path.name,
                    reply.status,
                    reply.error_code or "",
                )
            path.unlink(missing_ok=True)

    # -- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        state = self.slots.load()
        return {
            "state": self.state,
            "slot": state.active,
            "previous": state.previous,
            "trial": state.trial.version if state.trial else None,
            "failed": state.failed,
            "installed": self.slots.installed_versions(),
            "offered": self.offered,
            "refused": self.refused,
            "last_check_ms": self.last_check_ms,
            "last_error": self.last_error,
            "trusted_metadata": self.trusted,
        }

    def _set_state(self, state: str) -> None:
        self.state = state
        self.on_change()

    def _error(self, message: str) -> None:
        self.last_error = message
        self.on_change()


class CoordinatorFetcher(FetcherInterface):
    """ngclient's fetcher over the agent's coordinator client (called in a worker thread)."""

    def __init__(
        self, client: CoordinatorClient, loop: asyncio.AbstractEventLoop, timeout_s: float
    ) -> None:
        self.client = client
        self.loop = loop
        self.timeout_s = timeout_s

    def _fetch(self, url: str) -> Iterator[bytes]:
        future = asyncio.run_coroutine_threadsafe(self.client.fetch(url, MAX_FILE_BYTES), self.loop)
        try:
            status, data = future.result(self.timeout_s * 2 + 5)
        except Unreachable as exc:
            raise DownloadError(str(exc)) from None
        except TimeoutError:
            future.cancel()
            raise DownloadError(f"{url}: timed out") from None
        if status != 200:
            raise DownloadHTTPError(f"{url}: HTTP {status}", status)
        return iter((data,))


def install_slot(slots: Slots, version: str, wheels: list[Path]) -> Path:
    """Install ``wheels`` into the slot of ``version`` with the PyPA installer; its path."""
    from installer import install
    from installer.destinations import SchemeDictionaryDestination
    from installer.sources import WheelFile

    dest = slots.path(version)
    partial = dest.with_name(f".{version}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    site = partial / slots.site(version).relative_to(dest)
    scheme = {
        "purelib": str(site),
        "platlib": str(site),
        "scripts": str(partial / "bin"),
        "data": str(partial / "data"),
        "headers": str(partial / "include"),
    }
    destination = SchemeDictionaryDestination(
        scheme,
        interpreter=sys.executable,
        script_kind="posix",
        bytecode_optimization_levels=(0,),
    )
    for wheel in wheels:
        with WheelFile.open(wheel) as source:
            install(source, destination, additional_metadata={})
    (partial / COMPLETE).write_text(json.dumps({"version": version}) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest


def _is_verification_error(exc: BaseException) -> bool:
    """A file that does not match the signed metadata (as opposed to a network hiccup)."""
    return isinstance(exc, (RepositoryError, DownloadLengthMismatchError))
