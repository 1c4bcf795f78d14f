"""Files replaced whole: a reader sees the old content or the new, never a mix, and a
private file is never readable by anyone else, not even for a moment.

:func:`atomic_write` writes a new temporary file next to the target (a rename is atomic
only within one file system), created with ``O_EXCL`` under a random name with the
final mode already set, so neither an existing file with looser permissions nor a
symbolic link planted there is ever written through. It then syncs the file, renames it
over the target and syncs the directory, so after a crash or a power loss the target
holds either the old bytes or the new ones. When anything fails, the temporary file is
removed and the target is left exactly as it was.

Temporary files are named ``.<name>.tmp-<random>`` (:data:`TEMP_GLOB`): hidden, and
recognisable to whoever sweeps what a crash left behind.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

#: Matches the temporary files ``atomic_write`` creates (and a crash may leave behind).
TEMP_GLOB = ".*.tmp-*"

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def fsync_dir(directory: Path) -> None:
    """Make the entries of ``directory`` (a rename, a new or a deleted file) durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically; with ``durable``, also across a power loss.

    ``mode`` is the new file's permissions less the process umask (as ``os.open`` creates
    files); they hold from the moment the temporary file exists, so a key written with
    ``0o600`` is never readable by others. The directory must exist. Raises ``OSError``
    (the target then is unchanged and no temporary file remains).
    """
    fd, tmp = _create_temp(path, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def _create_temp(path: Path, mode: int) -> tuple[int, Path]:
    """A new, empty temporary file beside ``path``, open for writing, and its path."""
    while True:
        tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
        try:
            return os.open(tmp, _CREATE, mode), tmp
        except FileExistsError:  # 64 random bits taken: astronomically rare, pick again
            continue
