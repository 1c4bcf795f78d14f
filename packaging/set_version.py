#!/usr/bin/env python3
"""Set the one version of aeamc-shared, aeamc-agent and aeamc-coordinator.

The three distributions are released together: they always carry the same version, and
both Debian packages take theirs from it (packaging/build.py refuses a mismatch, and
tests/packaging checks that sources, .debs and installed commands agree).

    packaging/set_version.py 0.2.0        # rewrites the three __version__ lines
    packaging/set_version.py              # prints the current version
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROJECTS = ("shared", "agent", "coordinator")
VERSION_LINE = re.compile(r'^__version__ = "([^"]+)"$', re.MULTILINE)
# PEP 440 public versions without epochs or local parts: what a Debian version can mirror.
PEP440 = re.compile(r"^\d+(\.\d+)*((a|b|rc)\d+)?(\.post\d+)?(\.dev\d+)?$")


def init_files(source: Path) -> list[Path]:
    return [source / p / "src" / "aeamc" / p / "__init__.py" for p in PROJECTS]


def current(source: Path) -> dict[Path, str]:
    found = {}
    for path in init_files(source):
        match = VERSION_LINE.search(path.read_text())
        if match is None:
            raise SystemExit(f'set_version: {path}: no `__version__ = "..."` line')
        found[path] = match.group(1)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="packaging/set_version.py", description=__doc__)
    parser.add_argument("version", nargs="?", help="new version, e.g. 0.2.0")
    parser.add_argument("--source", type=Path, default=REPO, help="source tree (default: this)")
    args = parser.parse_args(argv)
    versions = current(args.source)
    if args.version is None:
        distinct = sorted(set(versions.values()))
        if len(distinct) != 1:
            for path, version in versions.items():
                print(f"{path}: {version}", file=sys.stderr)
            print("set_version: the distributions disagree; set one version", file=sys.stderr)
            return 1
        print(distinct[0])
        return 0
    if not PEP440.match(args.version):
        print(
            f"set_version: {args.version!r} is not a version like 1.2.3 or 1.2.3rc1",
            file=sys.stderr,
        )
        return 64
    for path in versions:
        text = path.read_text()
        path.write_text(VERSION_LINE.sub(f'__version__ = "{args.version}"', text, count=1))
    print(args.version)
    return 0


if __name__ == "__main__":
    sys.exit(main())
