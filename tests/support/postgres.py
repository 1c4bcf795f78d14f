"""A real PostgreSQL server for tests, from Debian's ``postgresql`` package.

Each pytest process starts its own cluster in a temporary directory, on a free loopback
port, with trust authentication for the one role ``aeamc`` (nothing listens beyond
127.0.0.1, and the socket directory is private). PostgreSQL refuses to run as root, and CI
runs as root: there the server runs as ``nobody``, which owns the directory. Each test
gets a database of its own (:meth:`PostgresServer.new_database`), so tests never see each
other's rows.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

ROLE = "aeamc"


def binaries() -> Path | None:
    """The newest installed server's bin directory, or None when none is installed."""
    found = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda p: int(p.parent.parent.name),
    )
    return found[-1].parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresServer:
    """One PostgreSQL cluster, started by :meth:`start` and removed by :meth:`stop`."""

    def __init__(self, *, listen: str = "127.0.0.1", netns: str | None = None) -> None:
        """``listen``: the address it takes TCP connections on (trusted for its /24);
        ``netns``: the network namespace it runs in (its Unix socket, in the temporary
        directory, is reachable from any namespace: :meth:`local_url`)."""
        bindir = binaries()
        if bindir is None:
            raise RuntimeError("PostgreSQL is not installed (Debian: apt-get install postgresql)")
        self.bindir = bindir
        self.root = Path(tempfile.mkdtemp(prefix="aeamc-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.listen = listen
        self.netns = netns
        self._user = "nobody" if os.geteuid() == 0 else None

    def _run(self, *argv: str) -> None:
        cmd = [str(self.bindir / argv[0]), *argv[1:]]
        if self._user is not None:
            cmd = ["runuser", "-u", self._user, "--", *cmd]
        if self.netns is not None:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120, cwd="/")

    def start(self) -> PostgresServer:
        if self._user is not None:
            user = pwd.getpwnam(self._user)
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.root.chmod(0o700)
        self._run("initdb", "-D", str(self.data), "-U", ROLE, "--auth=trust", "-E", "UTF8")
        if self.listen != "127.0.0.1":
            network = ".".join(self.listen.split(".")[:3]) + ".0/24"
            with (self.data / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all {ROLE} {network} trust\n")
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses={self.listen} "
            "-c fsync=on -c max_connections=200 -c shared_buffers=32MB"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "log"),
            "-w",
            "start",
        )
        return self

    def stop(self) -> None:
        if self.data.exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, dbname: str = "postgres") -> str:
        """Over TCP, at the listening address."""
        return f"postgresql://{ROLE}@{self.listen}:{self.port}/{dbname}"

    def local_url(self, dbname: str = "postgres") -> str:
        """Over the Unix socket: from this machine, whatever its network namespace."""
        return f"postgresql://{ROLE}@/{dbname}?host={self.root}&port={self.port}"

    def new_database(self) -> str:
        """A new empty database; its URL (over TCP)."""
        name = "t_" + uuid.uuid4().hex[:16]
        with psycopg.connect(self.local_url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def postmaster_pid(self) -> int:
        """The server's main process (its backends are its children)."""
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def log_text(self) -> str:
        try:
            return (self.root / "log").read_text(errors="replace")
        except OSError:
            return ""
