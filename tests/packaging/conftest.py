"""Fixtures for the Debian packages: built once per test session, then shared.

Building a venv takes seconds, so ``debs`` builds both packages of this tree once, and
``next_debs`` builds both again from a copy of the tree whose version is one patch level
higher (what an upgrade installs). Both use the wheel cache of ``make packages``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
AGENT, COORDINATOR = "aeamc-agent", "microblock-coordinator"
NOBODY = (65534, 65534)


@dataclass(frozen=True)
class Build:
    version: str
    arch: str
    debs: Path  # the directory

    def deb(self, package: str) -> Path:
        return self.debs / f"{package}_{self.version}_{self.arch}.deb"


def clean_env() -> dict[str, str]:
    """The environment minus coverage's subprocess hooks (nothing to measure in a build)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE")}


def current_version(source: Path = REPO) -> str:
    out = subprocess.run(
        [sys.executable, PACKAGING / "set_version.py", "--source", source],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def build(source: Path, out: Path) -> Build:
    result = subprocess.run(
        [sys.executable, PACKAGING / "build.py", "--source", source, "--out", out, "-Z", "zstd"],
        capture_output=True,
        text=True,
        env=clean_env(),
        check=False,
    )
    assert result.returncode == 0, f"build failed:\n{result.stdout}\n{result.stderr}"
    arch = subprocess.run(
        ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
    ).stdout.strip()
    return Build(current_version(source), arch, out)


def bump(version: str) -> str:
    """1.2.3 → 1.2.4: the next patch release."""
    head, last = re.fullmatch(r"(.*?)(\d+)", version).groups()  # type: ignore[union-attr]
    return f"{head}{int(last) + 1}"


@pytest.fixture(scope="session")
def shared_tmp() -> Iterator[Path]:
    """A tmp dir every user can traverse: the services' users must reach the venvs in it
    (pytest's own tmp dirs are private to the user running the tests)."""
    path = Path(tempfile.mkdtemp(prefix="aeamc-pkgtest-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def debs(shared_tmp: Path) -> Build:
    return build(REPO, shared_tmp / "debs")


@pytest.fixture(scope="session")
def next_debs(shared_tmp: Path) -> Build:
    """The same packages, one version up: a copy of the tree with set_version.py applied."""
    source = shared_tmp / "next-source"
    ignore = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__")
    for part in ("shared", "agent", "coordinator", "requirements", "docs"):
        shutil.copytree(REPO / part, source / part, ignore=ignore)
    subprocess.run(
        [sys.executable, PACKAGING / "set_version.py", "--source", source, bump(current_version())],
        capture_output=True,
        check=True,
    )
    return build(source, shared_tmp / "next-debs")


@pytest.fixture(scope="session")
def extracted(debs: Build, shared_tmp: Path) -> dict[str, Path]:
    """Each package's data unpacked (dpkg-deb -x), as a root-relative tree."""
    trees = {}
    for package in (AGENT, COORDINATOR):
        tree = shared_tmp / "extracted" / package
        tree.mkdir(parents=True)
        subprocess.run(["dpkg-deb", "-x", debs.deb(package), tree], check=True)
        trees[package] = tree
    return trees
