"""``aeamc-coordinator db ...``: the database's schema version, and taking it back.

``db downgrade`` lets an older release run on a database a newer release migrated: it
undoes the newer migrations with the down statements the database holds (``downgrade.py``),
after an online backup next to the database. It runs only while the coordinator is stopped
(the state directory's lock, ``db.lock_state``).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

from . import console
from . import downgrade as dg
from .db import StateInUse, connect, lock_state


def add_db_parser(sub: Any, parser_class: Any) -> None:
    """``db status`` and ``db downgrade`` on ``sub`` (the top-level subparsers)."""
    db = sub.add_parser("db", help="the database's schema version; downgrade it for a rollback")
    actions = db.add_subparsers(dest="db_command", required=True, parser_class=parser_class)
    actions.add_parser(
        "status", help="this software's schema version and the database's"
    ).set_defaults(func=cmd_db_status)
    down = actions.add_parser(
        "downgrade",
        help="take the database back to this software's schema (coordinator stopped)",
        description="Undo the migrations of a newer release with the down statements it "
        "stored in the database, after a backup next to it. Rows of the tables and columns "
        "this release has are kept; what only the newer release has is dropped (listed first).",
    )
    down.add_argument("--yes", action="store_true", help="downgrade without asking")
    down.add_argument(
        "--to-version",
        type=int,
        metavar="N",
        help="schema version to go back to (default: this software's); "
        "for a release older than this one, run this with this one installed",
    )
    down.set_defaults(func=cmd_db_downgrade)


def cmd_db_status(args: argparse.Namespace) -> int:
    config = console.load(args)
    path = config.db_path
    software = dg.software_version()
    print(f"software schema  v{software}")
    if not path.exists():
        print(f"database schema  none yet: {path} is created at the first start")
        return console.EX_OK
    conn = sqlite3.connect(path)
    try:
        current = dg.database_version(conn)
        stored = dg.stored(conn)
    finally:
        conn.close()
    print(f"database schema  v{current} ({path})")
    if current > software:
        missing = [v for v in range(software + 1, current + 1) if v not in stored]
        print(
            "the database is newer than this software, which does not start on it: "
            + (
                "with the coordinator stopped, `aeamc-coordinator db downgrade` takes it "
                f"back to v{software}"
                if not missing
                else "it cannot be taken back: it holds no down statements for "
                + ", ".join(f"v{v}" for v in missing)
            )
        )
    elif current < software:
        print(f"the database is older: the next start migrates it to v{software}")
    return console.EX_OK


def cmd_db_downgrade(args: argparse.Namespace) -> int:
    config = console.load(args)
    software = dg.software_version()
    target = software if args.to_version is None else args.to_version
    if target > software:
        raise console.CliError(
            f"this software knows schema versions up to v{software}", console.EX_USAGE
        )
    try:
        lock = lock_state(config.state_dir, exclusive=True)
    except StateInUse as exc:
        raise console.CliError(f"{exc}; nothing was changed") from None
    try:
        return _downgrade(args, config.db_path, target)
    finally:
        os.close(lock)


def _downgrade(args: argparse.Namespace, path: Path, target: int) -> int:
    if not path.exists():
        raise console.CliError(f"there is no database at {path}")
    owner = path.stat().st_uid
    if os.geteuid() != owner:
        # The backup, and SQLite's -wal and -shm files, must belong to the service's user.
        raise console.CliError(
            f"run this as the user that owns {path} (uid {owner}), e.g. "
            "sudo -u microblock-coordinator aeamc-coordinator ... db downgrade; "
            "nothing was changed"
        )
    conn = connect(path)
    try:
        try:
            plan = dg.plan(conn, target)
        except dg.DowngradeRefused as exc:
            raise console.CliError(f"cannot downgrade: {exc}") from None
        if not plan.steps:
            print(f"database schema v{plan.current}: nothing to take back (target v{target})")
            return console.EX_OK
        print(f"database {path}: schema v{plan.current} -> v{plan.target}")
        if plan.drops:
            print("dropped for good, with their data (only the newer schema has them):")
            for line in plan.drops:
                print(f"  {line}")
        else:
            print("nothing is dropped: every table and column holds on")
        if not args.yes and not _confirm():
            raise console.CliError("not confirmed; nothing was changed")
        backup = dg.backup(conn, path, plan.current)
        print(f"backup of schema v{plan.current}: {backup}")
        try:
            dg.downgrade(conn, plan)
        except (dg.DowngradeRefused, sqlite3.Error) as exc:
            raise console.CliError(f"downgrade failed, nothing was changed: {exc}") from None
        print(f"database schema is now v{plan.target}; start the coordinator")
        return console.EX_OK
    finally:
        conn.close()


def _confirm() -> bool:
    if not sys.stdin.isatty():
        raise console.CliError(
            "refusing to downgrade without confirmation: pass --yes; nothing was changed",
            console.EX_USAGE,
        )
    answer = input("Type 'yes' to back up the database and downgrade it: ")
    return answer.strip().lower() == "yes"
