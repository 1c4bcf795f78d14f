"""A throwaway root: this machine's own root, copy-on-write, for real ``dpkg -i``.

Each command runs in a private mount namespace (``unshare --mount``) in which an
overlayfs puts a private upper layer over ``/`` and ``chroot``\\s into it. dpkg, adduser,
update-alternatives and the maintainer scripts run exactly as on a Debian host, and see
this host's installed packages (so ``Depends:`` are checked for real); everything they
write — /etc/passwd, /opt, /var/lib/dpkg — lands in the upper layer, a directory under
the test's tmp dir. The host's users, files and package database never change.

/run is a fresh tmpfs on each command, so it never has /run/systemd/system: maintainer
scripts see no running systemd and leave services alone. The .deb directory is
bind-mounted read-only on /mnt.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

_ENTER = r"""
set -e
upper=$1 work=$2 root=$3 debs=$4 script=$5
mount -t overlay overlay -o "lowerdir=/,upperdir=$upper,workdir=$work" "$root"
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
mount -t tmpfs -o mode=0755 tmpfs "$root/run"
mkdir -p "$root/run/lock"
if [ -n "$debs" ]; then mount --bind -o ro "$debs" "$root/mnt"; fi
exec chroot "$root" /usr/bin/env -i HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin /bin/sh -ec "$script"
"""


def unavailable() -> str | None:
    """Why a throwaway root cannot be made here, or None."""
    if os.geteuid() != 0:
        return "needs root (mount namespace, overlayfs, chroot)"
    for tool in ("unshare", "chroot", "dpkg"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


class Throwaway:
    def __init__(self, base: Path, debs: Path | None = None) -> None:
        self.upper, self.work, self.root = base / "upper", base / "work", base / "root"
        for d in (self.upper, self.work, self.root):
            d.mkdir(parents=True, exist_ok=True)
        self.debs = debs

    def run(
        self, script: str, *, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run a ``sh -e`` script inside the throwaway root; output is captured."""
        result = subprocess.run(
            [
                *("unshare", "--mount", "--propagation", "private", "--", "sh", "-c", _ENTER),
                *("enter", str(self.upper), str(self.work), str(self.root)),
                *(str(self.debs or ""), script),
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"exit {result.returncode} from:\n{script}\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
            )
        return result

    def out(self, script: str) -> str:
        return self.run(script).stdout

    def probe(self) -> str | None:
        """None if the layer can be mounted here, else the reason it cannot."""
        result = self.run("true", check=False, timeout=30)
        if result.returncode != 0:
            return f"cannot mount an overlay on /: {result.stderr.strip()}"
        return None
