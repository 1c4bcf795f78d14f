"""The TUF side of an update check: python-tuf's ngclient over the agent's own client.

Apart from ``updater.py`` because python-tuf (and securesystemslib, and the PyPA installer)
cost an idle daemon as much memory as its HTTP stack: this module is imported at the first
update check (``updates.check_interval_s`` after the daemon starts), never at start.

Everything here runs in a worker thread (``asyncio.to_thread``): ngclient is synchronous,
and its fetcher bridges each download back to the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tuf.api.exceptions import (
    DownloadError,
    DownloadHTTPError,
    DownloadLengthMismatchError,
    RepositoryError,
)
from tuf.ngclient import FetcherInterface
from tuf.ngclient import Updater as TufUpdater

from aeamc.shared.releases import manifest_path, target_path

from .client import CoordinatorClient, Unreachable
from .slots import COMPLETE, Slots

log = logging.getLogger(__name__)

METADATA_PATH = "/v1/updates/metadata/"
TARGETS_PATH = "/v1/updates/targets/"
#: Largest file the updater downloads (a release is two small wheels and a manifest).
MAX_FILE_BYTES = 64 * 1024 * 1024


class NoRepository(Exception):
    """The coordinator has no TUF repository (``release init`` was never run there)."""


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


def refresh(
    metadata_dir: Path, url: str, fetcher: CoordinatorFetcher, root: Path | None
) -> tuple[TufUpdater, dict[str, int]]:
    """Refreshed trusted metadata, and the version of each role now trusted (for status).

    ``root`` is the configured trust anchor; without one the coordinator's v1 root is
    trusted on first use."""
    metadata_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    bootstrap = None
    if not (metadata_dir / "root.json").exists():
        bootstrap = _bootstrap_root(url, fetcher, root)
    updater = TufUpdater(
        metadata_dir=str(metadata_dir),
        metadata_base_url=url.rstrip("/") + METADATA_PATH,
        target_base_url=url.rstrip("/") + TARGETS_PATH,
        fetcher=fetcher,
        bootstrap=bootstrap,
    )
    updater.refresh()
    # A read-only look at the versions now trusted, for status (ngclient has no API).
    trusted = {signed.type: signed.version for signed in updater._trusted_set}
    return updater, trusted


def _bootstrap_root(url: str, fetcher: CoordinatorFetcher, root: Path | None) -> bytes:
    """The root to start from: configured, else the coordinator's v1 (pinned on first use)."""
    if root is not None:
        return root.read_bytes()
    try:
        data = fetcher.download_bytes(url.rstrip("/") + METADATA_PATH + "1.root.json", 512_000)
    except DownloadHTTPError as exc:
        if exc.status_code == 404:
            raise NoRepository from None
        raise
    log.warning("no TUF root configured: trusting the coordinator's root on first use")
    return data


def install(updater: TufUpdater, slots: Slots, release: str) -> None:
    """Download ``release`` (each file checked against the signed targets) into a slot."""
    slots.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    work = Path(tempfile.mkdtemp(prefix=".download-", dir=slots.dir))
    try:
        manifest = _download(updater, manifest_path(release), work)
        data = json.loads(manifest.read_bytes())
        wheels = data.get("wheels") if isinstance(data, dict) else None
        if data.get("version") != release or not isinstance(wheels, list) or not wheels:
            raise ValueError(f"the manifest of release {release} is not one")
        files = [_download(updater, target_path(release, str(w)), work) for w in wheels]
        install_slot(slots, release, files)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _download(updater: TufUpdater, path: str, work: Path) -> Path:
    info = updater.get_targetinfo(path)
    if info is None:
        raise LookupError(f"{path} is not in the signed targets metadata")
    name = path.rsplit("/", 1)[1]
    if "/" in name or name.startswith("."):
        raise ValueError(f"bad file name {name!r}")
    return Path(updater.download_target(info, str(work / name)))


def install_slot(slots: Slots, version: str, wheels: list[Path]) -> Path:
    """Install ``wheels`` into the slot of ``version`` with the PyPA installer; its path."""
    from installer import install as install_wheel
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
            install_wheel(source, destination, additional_metadata={})
    (partial / COMPLETE).write_text(json.dumps({"version": version}) + "\n")
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    return dest


def is_verification_error(exc: BaseException) -> bool:
    """A file that does not match the signed metadata (as opposed to a network hiccup)."""
    return isinstance(exc, (RepositoryError, DownloadLengthMismatchError))
