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

The TUF side runs in a helper process for each check (tufclient.py), so the daemon never
loads python-tuf. All HTTP goes through the agent's own coordinator client (the same
session, URL and transport as heartbeats): the helper asks the daemon for each file.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime
import json
import logging
import random
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from aeamc.shared.identity import Signer
from aeamc.shared.messages import sign
from aeamc.shared.releases import (
    METADATA_PATH,
    REFUSED,
    UPDATED,
    UpdateReport,
    choose_release,
)

from . import __version__
from .backoff import jittered
from .client import CoordinatorClient, Unreachable
from .config import AgentConfig
from .launcher import EX_RESTART
from .locator import CoordinatorLocator
from .slots import Slots

log = logging.getLogger(__name__)

REPORTS_PATH = "/v1/updates/reports"
#: Largest file the updater downloads (a release is two small wheels and a manifest).
MAX_FILE_BYTES = 64 * 1024 * 1024
#: A line from the helper holds one file, base64-encoded.
HELPER_LINE_LIMIT = MAX_FILE_BYTES * 2
IDLE_POLL_S = 0.2
#: A timestamp.json is a few hundred bytes; anything much larger is not one.
MAX_TIMESTAMP_BYTES = 64 * 1024
#: The top-level metadata a refresh checks for expiry; a skipped refresh checks it too.
TOP_LEVEL_ROLES = ("root", "timestamp", "snapshot", "targets")
#: A skipped refresh needs every trusted role valid for at least this long after now.
UNCHANGED_MARGIN_S = 300


NO_REPOSITORY = "the coordinator offers no updates (no update repository)"


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
        #: Checks that ran a TUF refresh (in the helper), and checks that found the
        #: repository's timestamp unchanged and so needed none.
        self.refreshes = 0
        self.unchanged_checks = 0
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
        if await self._unchanged(url):
            # Nothing a refresh could learn: what this process verified last still holds.
            self.unchanged_checks += 1
            self.last_check_ms = self.clock_ms()
            self.last_error = None
        else:
            refreshed = await self._tuf("refresh", url)
            if not self._refreshed(refreshed):
                return
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
        installed = await self._tuf("install", url, release=release)
        if "error" in installed:
            self._set_state("idle")
            if installed["kind"] == "verification":
                detail = f"verification failed: {installed['error']}"
                self.refused[release] = detail
                self.slots.add_report(release, REFUSED, detail, __version__, self.clock_ms())
                self._error(f"release {release} refused: {detail}")
                log.error("release %s refused, nothing installed: %s", release, detail)
                await self.deliver_reports()
            else:
                self._error(f"release {release} not installed: {installed['error']}")
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

    def _refreshed(self, refreshed: dict[str, Any]) -> bool:
        """Take in the helper's refresh; False when it found no repository or refused one."""
        if refreshed.get("kind") == "no_repository":
            if self.last_error != NO_REPOSITORY:
                log.info("%s", NO_REPOSITORY)
            self._error(NO_REPOSITORY)
            return False
        if "error" in refreshed:
            self._error(f"update metadata refused: {refreshed['error']}")
            log.warning("%s", self.last_error)
            return False
        self.trusted = refreshed["trusted"]
        self.refreshes += 1
        self.last_check_ms = self.clock_ms()
        self.last_error = None
        return True

    async def _unchanged(self, url: str) -> bool:
        """Whether the repository's timestamp.json is, byte for byte, the one this process's
        last refresh verified and stored, with every trusted top-level role still valid past
        ``UNCHANGED_MARGIN_S``: then a TUF refresh would verify the same signatures again
        and learn nothing, so the check costs one small request instead of a helper process
        (most checks find nothing new). Any difference, error or doubt runs the refresh.

        The stored timestamp was verified by python-tuf before it was written, and a
        repository that changes anything (snapshot, targets, a new release) signs a new
        timestamp; expiry is what protects against a replayed (frozen) one, and it is
        checked here as the refresh would check it.
        """
        if not self.trusted:  # no refresh verified by this process yet
            return False
        local = self.metadata_dir / "timestamp.json"
        try:
            status, remote = await self.client.fetch(
                url.rstrip("/") + METADATA_PATH + "timestamp.json", MAX_TIMESTAMP_BYTES
            )
            if status != 200 or remote != local.read_bytes():
                return False
            horizon = self.clock_ms() / 1000 + UNCHANGED_MARGIN_S
            for role in TOP_LEVEL_ROLES:
                signed = json.loads((self.metadata_dir / f"{role}.json").read_bytes())["signed"]
                if _expiry_s(signed["expires"]) <= horizon:
                    return False
        except (Unreachable, OSError, ValueError, KeyError, TypeError):
            return False
        return True

    # -- TUF, in a helper process (tufclient.py) ---------------------------------------------

    async def _tuf(self, op: str, url: str, **args: Any) -> dict[str, Any]:
        """Run one TUF step in the helper, serving the files it fetches; its answer."""
        request = {
            "op": op,
            "url": url,
            "metadata_dir": str(self.metadata_dir),
            "root": str(self.config.update_root) if self.config.update_root else None,
            "state_dir": str(self.config.state_dir),
            **args,
        }
        helper = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aeamc.agent.tufclient",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=HELPER_LINE_LIMIT,
        )
        assert helper.stdin is not None and helper.stdout is not None
        try:
            helper.stdin.write(json.dumps(request).encode() + b"\n")
            while line := await helper.stdout.readline():
                message = json.loads(line)
                if "fetch" not in message:
                    return message  # type: ignore[no-any-return]
                try:
                    status, data = await self.client.fetch(message["fetch"], MAX_FILE_BYTES)
                    answer = {"status": status, "data": base64.b64encode(data).decode()}
                except Unreachable as exc:
                    answer = {"unreachable": str(exc)}
                helper.stdin.write(json.dumps(answer).encode() + b"\n")
                await helper.stdin.drain()
            return {"error": f"the update helper exited ({await helper.wait()})", "kind": "failed"}
        finally:
            if helper.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    helper.kill()
                await helper.wait()

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
            "refreshes": self.refreshes,
            "unchanged_checks": self.unchanged_checks,
            "last_error": self.last_error,
            "trusted_metadata": self.trusted,
        }

    def _set_state(self, state: str) -> None:
        self.state = state
        self.on_change()

    def _error(self, message: str) -> None:
        self.last_error = message
        self.on_change()


def _expiry_s(expires: str) -> float:
    """A TUF ``expires`` (ISO 8601 UTC, ``…Z``) as seconds since the epoch."""
    when = datetime.datetime.fromisoformat(expires.replace("Z", "+00:00"))
    if when.tzinfo is None:
        raise ValueError(f"expiry without a time zone: {expires!r}")
    return when.timestamp()
