"""Private files — key files, PIN files — read and written so that no one else sees them.

Every secret on disk goes through here: the device and coordinator identities, TLS keys,
the wallet key, a PKCS#11 ``pin-source``. A file is opened without following a symbolic
link, its mode is checked on the open descriptor (``fstat``) and the bytes are read from
that same descriptor, so what was checked is what is read: there is no window in which the
path could be swapped between the check and the read. A file that group or others may
read is refused, since its key may already have leaked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

#: Most bytes read from a private file; every key and PIN this project stores is smaller.
MAX_PRIVATE_BYTES = 64 * 1024


class KeyFileError(Exception):
    """A private file is missing, unreadable, malformed or not private enough to trust."""


def read_private(path: Path, *, what: str = "key file", hint: str = "") -> bytes:
    """The bytes of the private file ``path``, at most ``MAX_PRIVATE_BYTES``.

    Raises ``KeyFileError``: "``path``: no ``what`` (``hint``)" when it does not exist, or
    a message with "too open" and "chmod 600" when group or others may access it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no {what}" + (f" ({hint})" if hint else "")) from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot open: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(f.fileno()).st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"{path}: permissions {stat.filemode(mode)} are too open (other users may "
                f"have read the {what}); chmod 600 {path}"
            )
        return f.read(MAX_PRIVATE_BYTES)


def create_private(path: Path, data: bytes, *, what: str = "key file") -> None:
    """Write a new private file (mode 0600) and make it durable; never replaces one.

    Its folder is created if missing. Raises ``KeyFileError`` if ``path`` exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise KeyFileError(f"{path} exists; refusing to overwrite a {what}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def read_hex_secret(
    path: Path, size: int, *, kind: str, what: str = "key file", hint: str = ""
) -> bytes:
    """The ``size``-byte secret a private file holds as hex (``0x`` prefix allowed).

    Read as ``read_private`` reads; raises ``KeyFileError`` "not a hex ``kind``" or "a
    ``kind`` is ``size`` bytes" when the contents are not such a secret."""
    raw = read_private(path, what=what, hint=hint)
    try:
        secret = bytes.fromhex(raw.decode("ascii").strip().removeprefix("0x"))
    except (UnicodeDecodeError, ValueError):
        raise KeyFileError(f"{path}: not a hex {kind} ({2 * size} hex characters)") from None
    if len(secret) != size:
        raise KeyFileError(
            f"{path}: a {kind} is {size} bytes ({2 * size} hex characters), not {len(secret)}"
        )
    return secret
