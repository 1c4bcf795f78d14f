"""The TUF repository of agent releases, in ``<state_dir>/updates/``.

=====================  =====================================================================
``metadata/``          ``N.root.json``, ``N.targets.json``, ``N.snapshot.json`` (consistent
                       snapshots: every version stays fetchable), ``timestamp.json``
``targets/``           ``agent/<version>/<sha256>.<file>``: the wheels and ``release.json``
``keys/``              the online snapshot and timestamp keys (unless configured elsewhere)
``lock``               held while metadata changes (CLI commands and the daemon's re-signing)
=====================  =====================================================================

Root and targets keys are meant to live offline (a keys folder on removable media, or an
HSM); only snapshot and timestamp are signed on the coordinator, which re-signs them
before they expire. Every change bumps the version of what it changes and re-signs the
roles above it (targets → snapshot → timestamp), written in that order so a client never
sees a timestamp naming a snapshot that is not there yet.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import re
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuf.api.exceptions import UnsignedMetadataError
from tuf.api.metadata import (
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer

from aeamc.shared.releases import (
    MANIFEST_NAME,
    TARGET_PREFIX,
    manifest_path,
    target_path,
)
from aeamc.shared.runtime.files import atomic_write
from aeamc.shared.runtime.pkcs11 import is_pkcs11_uri
from aeamc.shared.versions import is_version, newer, version_key

from ..config import UpdatesConfig
from .signing import OFFLINE_ROLES, ROLES, Ed25519Signer, RoleKeyError, load_role_signer

#: What a release must hold: the agent and the protocol core it was built with.
REQUIRED_DISTRIBUTIONS = ("aeamc_agent", "aeamc_shared")
METADATA_NAME = re.compile(r"(?:[1-9][0-9]{0,9}\.)?(root|targets|snapshot|timestamp)\.json")
_WHEEL = re.compile(r"([A-Za-z0-9_]+)-([^-]+)-py3-none-any\.whl")
_SERIALIZER = JSONSerializer(compact=False)
#: Metadata and targets are published (agents download them): readable by all, written
#: whole (``atomic_write``), so a reader never sees half a file.
PUBLIC_MODE = 0o644


class RepositoryError(Exception):
    """The repository cannot do this; the message says why (nothing was changed)."""


def now_utc() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclass(frozen=True)
class Release:
    version: str
    files: tuple[str, ...]


class Repository:
    def __init__(
        self,
        root_dir: Path,
        config: UpdatesConfig,
        *,
        state_dir: Path,
        clock: Callable[[], dt.datetime] = now_utc,
    ) -> None:
        self.dir = root_dir
        self.config = config
        self.state_dir = state_dir
        self.clock = clock
        self.metadata_dir = root_dir / "metadata"
        self.targets_dir = root_dir / "targets"

    # -- keys ------------------------------------------------------------------------------

    def key_ref(self, role: str, keys_dir: Path | None = None) -> str | Path:
        """Where ``role``'s key is: configured, else the offline folder, else online."""
        configured = getattr(self.config, f"{role}_key")
        if configured:
            if configured.lower().startswith("pkcs11:"):
                return str(configured)
            path = Path(configured)
            return path if path.is_absolute() else self.state_dir / path
        if role in OFFLINE_ROLES:
            if keys_dir is None:
                raise RoleKeyError(
                    f"the {role} key is offline: pass --keys DIR (the folder `release keygen` "
                    f"made), or set updates.{role}_key"
                )
            return keys_dir / f"{role}.key"
        return self.dir / "keys" / f"{role}.key"

    def signer(self, role: str, keys_dir: Path | None = None, *, create: bool = False) -> Any:
        signer = load_role_signer(self.key_ref(role, keys_dir), create=create)
        if self.exists:
            root = self.root()
            allowed = root.signed.roles[role].keyids
            if signer.keyid not in allowed:
                raise RoleKeyError(f"that {role} key is not the one root.json lists for {role}")
        return signer

    # -- reading ---------------------------------------------------------------------------

    @property
    def exists(self) -> bool:
        return (self.metadata_dir / "timestamp.json").exists()

    def _load(self, name: str) -> Metadata[Any]:
        try:
            return Metadata.from_file(str(self.metadata_dir / name))
        except FileNotFoundError:
            raise RepositoryError(
                "no update repository yet: run `aeamc-coordinator release init --keys DIR`"
            ) from None

    def root(self) -> Metadata[Root]:
        return self._load("root.json")

    def targets(self) -> Metadata[Targets]:
        return self._load("targets.json")

    def snapshot(self) -> Metadata[Snapshot]:
        return self._load("snapshot.json")

    def timestamp(self) -> Metadata[Timestamp]:
        return self._load("timestamp.json")

    def releases(self) -> list[Release]:
        """Every release the signed targets metadata holds, oldest first."""
        if not self.exists:
            return []
        by_version: dict[str, list[str]] = {}
        for path in self.targets().signed.targets:
            parts = path.split("/")
            if len(parts) == 3 and parts[0] + "/" == TARGET_PREFIX and is_version(parts[1]):
                by_version.setdefault(parts[1], []).append(parts[2])
        return [
            Release(v, tuple(sorted(files)))
            for v, files in sorted(by_version.items(), key=lambda kv: version_key(kv[0]))
            if MANIFEST_NAME in files
        ]

    def has_release(self, version: str) -> bool:
        return self.exists and manifest_path(version) in self.targets().signed.targets

    @staticmethod
    def release_version(wheels: Sequence[Path]) -> str | None:
        """The one version named by these wheel files, if they agree on one."""
        versions = {m.group(2) for w in wheels if (m := _WHEEL.fullmatch(w.name))}
        return versions.pop() if len(versions) == 1 else None

    def metadata_file(self, name: str) -> Path | None:
        """The file a client asks for by name, if it is one the repository serves."""
        if not METADATA_NAME.fullmatch(name):
            return None
        path = self.metadata_dir / name
        return path if path.is_file() else None

    def target_file(self, path: str) -> Path | None:
        """``agent/<v>/<sha256>.<file>`` as the client asks for it, if it exists."""
        parts = path.split("/")
        if len(parts) != 3 or parts[0] + "/" != TARGET_PREFIX or not is_version(parts[1]):
            return None
        if not re.fullmatch(r"[0-9a-f]{64}\.[A-Za-z0-9_.+-]{1,200}", parts[2]):
            return None
        file = self.targets_dir / parts[0] / parts[1] / parts[2]
        return file if file.is_file() else None

    def expiries(self) -> dict[str, str]:
        out = {}
        for role in ROLES:
            with contextlib.suppress(RepositoryError):
                md = self._load(f"{role}.json")
                out[role] = md.signed.expires.isoformat().replace("+00:00", "Z")
        return out

    def versions(self) -> dict[str, int]:
        out = {}
        for role in ROLES:
            with contextlib.suppress(RepositoryError):
                out[role] = self._load(f"{role}.json").signed.version
        return out

    # -- writing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with (self.dir / "lock").open("a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _expires(self, role: str) -> dt.datetime:
        c = self.config
        delta = {
            "root": dt.timedelta(days=c.root_expiry_days),
            "targets": dt.timedelta(days=c.targets_expiry_days),
            "snapshot": dt.timedelta(days=c.snapshot_expiry_days),
            "timestamp": dt.timedelta(seconds=c.timestamp_expiry_s),
        }[role]
        return self.clock() + delta

    def _write(self, md: Metadata[Any], *, versioned: bool) -> bytes:
        self.metadata_dir.mkdir(parents=True, exist_ok=True)
        data = md.to_bytes(_SERIALIZER)
        role = md.signed.type
        if versioned:
            versioned_file = self.metadata_dir / f"{md.signed.version}.{role}.json"
            atomic_write(versioned_file, data, mode=PUBLIC_MODE)
        atomic_write(self.metadata_dir / f"{role}.json", data, mode=PUBLIC_MODE)
        return data

    def init(self, keys_dir: Path | None) -> dict[str, str]:
        """Root v1 over the four role keys, and empty targets, snapshot, timestamp."""
        with self.locked():
            if self.exists:
                raise RepositoryError(f"{self.dir} already holds an update repository")
            # Online keys are made here; so is a key configured in an HSM (in the token).
            signers = {
                role: self.signer(
                    role,
                    keys_dir,
                    create=role not in OFFLINE_ROLES or is_pkcs11_uri(self.key_ref(role, keys_dir)),
                )
                for role in ROLES
            }
            root = Root(expires=self._expires("root"), consistent_snapshot=True)
            for role, signer in signers.items():
                root.add_key(signer.public_key, role)
            root_md = Metadata(root)
            root_md.sign(signers["root"])
            self._write(root_md, versioned=True)
            targets_md = Metadata(Targets(expires=self._expires("targets")))
            targets_md.sign(signers["targets"])
            self._publish_targets(targets_md, signers["snapshot"], signers["timestamp"])
            return {role: s.keyid for role, s in signers.items()}

    def stage(self, wheels: Sequence[Path], out: Path) -> Metadata[Targets]:
        """The next targets metadata with a release added, unsigned, and its files, in ``out``.

        For an offline targets key: carry ``out`` to the machine with the key, sign it
        there (``release sign``), bring it back and publish it.
        """
        release = self._check_release(wheels)
        version = self._version_of(release)
        md = self._next_targets(version, release)
        files = out / "files"
        files.mkdir(parents=True, exist_ok=True)
        for name, data in release.items():
            (files / name).write_bytes(data)
        atomic_write(out / "targets.json", md.to_bytes(_SERIALIZER), mode=PUBLIC_MODE)
        return md

    def publish(self, wheels: Sequence[Path], keys_dir: Path | None) -> str:
        """Add a release, signed with the targets key at hand; its version."""
        release = self._check_release(wheels)
        version = self._version_of(release)
        with self.locked():
            targets_signer = self.signer("targets", keys_dir)
            snapshot, timestamp = self.signer("snapshot"), self.signer("timestamp")
            md = self._next_targets(version, release)
            for name, data in release.items():
                self._store_target(target_path(version, name), data)
            md.sign(targets_signer)
            self._publish_targets(md, snapshot, timestamp)
        return version

    def _next_targets(self, version: str, release: dict[str, bytes]) -> Metadata[Targets]:
        """The current targets metadata, one version on, with ``release``'s files added
        (unsigned). Refuses a version that is already published."""
        if self.has_release(version):
            raise RepositoryError(f"release {version} is already published")
        current = self.targets()
        md = Metadata(
            Targets(
                version=current.signed.version + 1,
                expires=self._expires("targets"),
                targets=dict(current.signed.targets),
                delegations=current.signed.delegations,
            )
        )
        for name, data in release.items():
            path = target_path(version, name)
            md.signed.targets[path] = TargetFile.from_data(path, data)
        return md

    def publish_staged(self, staged: Path) -> str:
        """Publish targets metadata signed offline (``release sign``), with its files."""
        md = read_staged(staged)
        with self.locked():
            root, current = self.root(), self.targets()
            try:
                root.verify_delegate("targets", md)
            except UnsignedMetadataError:
                raise RepositoryError(
                    "the staged targets metadata is not signed by the targets key root.json "
                    "lists: sign it with `release sign` on the machine holding that key"
                ) from None
            if md.signed.version != current.signed.version + 1:
                raise RepositoryError(
                    f"the staged targets metadata is version {md.signed.version}, but the "
                    f"repository is at {current.signed.version}: stage it again"
                )
            if md.signed.is_expired(self.clock()):
                raise RepositoryError("the staged targets metadata has expired")
            added = {p: t for p, t in md.signed.targets.items() if p not in current.signed.targets}
            changed = [
                p for p, t in current.signed.targets.items() if md.signed.targets.get(p) != t
            ]
            if changed:
                raise RepositoryError(f"the staged metadata changes published targets: {changed}")
            versions = {p.split("/")[1] for p in added}
            if len(versions) != 1 or not added:
                raise RepositoryError("the staged metadata must add exactly one release")
            version = versions.pop()
            blobs = {}
            for path, info in added.items():
                file = staged / "files" / path.rsplit("/", 1)[1]
                try:
                    data = file.read_bytes()
                except OSError as exc:
                    raise RepositoryError(f"{file}: {exc.strerror}") from None
                try:
                    info.verify_length_and_hashes(data)
                except Exception:
                    raise RepositoryError(f"{file} does not match its signed hash") from None
                blobs[path] = data
            for path, data in blobs.items():
                self._store_target(path, data)
            self._publish_targets(md, self.signer("snapshot"), self.signer("timestamp"))
        return version

    def refresh_online(self, *, force: bool = False) -> list[str]:
        """Re-sign snapshot and timestamp before they expire; the roles re-signed.

        Each is renewed once less than half its lifetime is left, so a check every
        ``resign_check_s`` keeps clients from ever seeing expired metadata.
        """
        with self.locked():
            now = self.clock()
            done = []
            snapshot_md = self.snapshot()
            life = dt.timedelta(days=self.config.snapshot_expiry_days)
            if force or snapshot_md.signed.expires - now < life / 2:
                snapshot_md.signed.version += 1
                snapshot_md.signed.expires = self._expires("snapshot")
                snapshot_md.sign(self.signer("snapshot"))
                self._write(snapshot_md, versioned=True)
                done.append("snapshot")
            timestamp_md = self.timestamp()
            life = dt.timedelta(seconds=self.config.timestamp_expiry_s)
            if done or force or timestamp_md.signed.expires - now < life / 2:
                self._sign_timestamp(snapshot_md, self.signer("timestamp"))
                done.append("timestamp")
            return done

    # -- internals -------------------------------------------------------------------------

    def _publish_targets(
        self, targets_md: Metadata[Targets], snapshot: Ed25519Signer, timestamp: Ed25519Signer
    ) -> None:
        data = self._write(targets_md, versioned=True)
        previous = self.snapshot().signed.version if self.exists else 0
        snapshot_md = Metadata(
            Snapshot(
                version=previous + 1,
                expires=self._expires("snapshot"),
                meta={
                    "targets.json": MetaFile.from_data(targets_md.signed.version, data, ["sha256"])
                },
            )
        )
        snapshot_md.sign(snapshot)
        self._write(snapshot_md, versioned=True)
        self._sign_timestamp(snapshot_md, timestamp)

    def _sign_timestamp(self, snapshot_md: Metadata[Snapshot], signer: Ed25519Signer) -> None:
        data = (self.metadata_dir / f"{snapshot_md.signed.version}.snapshot.json").read_bytes()
        previous = self.timestamp().signed.version if self.exists else 0
        md = Metadata(
            Timestamp(
                version=previous + 1,
                expires=self._expires("timestamp"),
                snapshot_meta=MetaFile.from_data(snapshot_md.signed.version, data, ["sha256"]),
            )
        )
        md.sign(signer)
        self._write(md, versioned=False)

    def _store_target(self, path: str, data: bytes) -> None:
        digest = hashlib.sha256(data).hexdigest()
        directory, _, name = path.rpartition("/")
        dest = self.targets_dir / directory / f"{digest}.{name}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(dest, data, mode=PUBLIC_MODE)

    @staticmethod
    def _version_of(release: dict[str, bytes]) -> str:
        manifest = json.loads(release[MANIFEST_NAME])
        return str(manifest["version"])

    def _check_release(self, wheels: Sequence[Path]) -> dict[str, bytes]:
        """The files of a release (wheels and a manifest), or why these wheels are not one."""
        found: dict[str, tuple[str, Path]] = {}
        for wheel in wheels:
            m = _WHEEL.fullmatch(wheel.name)
            if m is None:
                raise RepositoryError(
                    f"{wheel.name}: a release is pure-Python wheels (name-version-py3-none-any.whl)"
                )
            if not zipfile.is_zipfile(wheel):
                raise RepositoryError(f"{wheel}: not a wheel (zip) file")
            found[m.group(1).lower()] = (m.group(2), wheel)
        missing = [d for d in REQUIRED_DISTRIBUTIONS if d not in found]
        if missing:
            raise RepositoryError(f"a release needs the wheels of {', '.join(missing)}")
        versions = {v for v, _ in found.values()}
        if len(versions) != 1:
            raise RepositoryError(f"the wheels disagree on the version: {sorted(versions)}")
        version = versions.pop()
        if not is_version(version):
            raise RepositoryError(f"{version!r} is not a release version like 1.2.3")
        if self.exists:
            for r in self.releases():
                if not newer(version, r.version):
                    raise RepositoryError(
                        f"release {version} is not newer than published release {r.version}"
                    )
        files = {w.name: w.read_bytes() for _, w in found.values()}
        manifest = {"version": version, "wheels": sorted(files)}
        files[MANIFEST_NAME] = json.dumps(manifest, indent=2, sort_keys=True).encode() + b"\n"
        return files


def read_staged(staged: Path) -> Metadata[Targets]:
    """The targets metadata of a staged release folder (``release stage``)."""
    path = staged / "targets.json"
    try:
        md: Metadata[Targets] = Metadata.from_file(str(path))
    except (OSError, ValueError) as exc:
        raise RepositoryError(f"{path}: {exc}") from None
    if md.signed.type != "targets":
        raise RepositoryError(f"{path} is not targets metadata")
    return md


def sign_staged(staged: Path, keys_dir: Path) -> Metadata[Targets]:
    """``release sign`` on the offline machine: sign staged targets with ``keys_dir``."""
    md = read_staged(staged)
    signer = load_role_signer(keys_dir / "targets.key")
    md.sign(signer)
    atomic_write(staged / "targets.json", md.to_bytes(_SERIALIZER), mode=PUBLIC_MODE)
    return md
