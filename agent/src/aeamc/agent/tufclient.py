"""The TUF side of an update check, in a helper process: python-tuf's ngclient, fetching
through the daemon's own connection to the coordinator.

python-tuf, securesystemslib (with cryptography) and the PyPA installer take as much
memory as the daemon's HTTP stack, and Python never unloads a module: imported by the
daemon at its first hourly check, they would stay for as long as it runs. So each check
is ``python -m aeamc.agent.tufclient``, started by the daemon (updater.py) and gone when
the check is done.

The helper has no network of its own: it reads one JSON request on stdin
(``{"op": "refresh" | "install", "metadata_dir", "url", "root", "state_dir", "release"}``),
and for every file ngclient wants it writes ``{"fetch": url}`` on stdout and reads the
daemon's ``{"status", "data"}`` (base64) or ``{"unreachable": why}``; its last line is the
answer, ``{"trusted": {role: version}}`` or ``{"error", "kind"}`` with ``kind``
``no_repository``, ``verification`` (a file that does not match the signed metadata) or
``failed``.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from tuf.api.exceptions import (
    DownloadError,
    DownloadHTTPError,
    DownloadLengthMismatchError,
    RepositoryError,
)
from tuf.ngclient import FetcherInterface
from tuf.ngclient import Updater as TufUpdater

from aeamc.shared.releases import METADATA_PATH, manifest_path, target_path
from aeamc.shared.runtime.logs import configure as configure_logs

from .slots import COMPLETE, Slots

log = logging.getLogger(__name__)

TARGETS_PATH = "/v1/updates/targets/"


class NoRepository(Exception):
    """The coordinator has no TUF repository (``release init`` was never run there)."""


class PipeFetcher(FetcherInterface):
    """ngclient's fetcher: each download is asked of the daemon over the helper's pipes."""

    def __init__(self, requests: IO[str], answers: IO[str]) -> None:
        self.requests = requests
        self.answers = answers

    def _fetch(self, url: str) -> Iterator[bytes]:
        self.requests.write(json.dumps({"fetch": url}) + "\n")
        self.requests.flush()
        answer = json.loads(self.answers.readline() or "{}")
        if "unreachable" in answer or "status" not in answer:
            raise DownloadError(str(answer.get("unreachable", "the daemon did not answer")))
        if answer["status"] != 200:
            raise DownloadHTTPError(f"{url}: HTTP {answer['status']}", answer["status"])
        return iter((base64.b64decode(answer["data"]),))


def refresh(
    metadata_dir: Path, url: str, fetcher: FetcherInterface, root: Path | None
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


def _bootstrap_root(url: str, fetcher: FetcherInterface, root: Path | None) -> bytes:
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


def handle(request: dict[str, Any], fetcher: FetcherInterface) -> dict[str, Any]:
    """One check: refresh the metadata, and for ``install`` download and install a release."""
    root = Path(request["root"]) if request.get("root") else None
    try:
        updater, trusted = refresh(Path(request["metadata_dir"]), request["url"], fetcher, root)
        if request["op"] == "install":
            install(updater, Slots(Path(request["state_dir"])), request["release"])
    except NoRepository:
        return {"error": "no update repository", "kind": "no_repository"}
    except Exception as exc:
        kind = "verification" if is_verification_error(exc) else "failed"
        return {"error": f"{type(exc).__name__}: {exc}", "kind": kind}
    return {"trusted": trusted}


def main() -> int:
    configure_logs(0)
    request = json.loads(sys.stdin.readline())
    answer = handle(request, PipeFetcher(sys.stdout, sys.stdin))
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
