"""Real agent releases for the update tests: wheels built from patched copies of the tree."""

from __future__ import annotations

import shutil
import sys
import zipfile
from pathlib import Path
from typing import Any

from tests.support.coordinator import CoordinatorProcess, merge

REPO = Path(__file__).resolve().parents[2]
BASE = "0.1.0"

#: Patches of a release's source that make a real, broken build. Each rewrites one line
#: in place, so line numbers (and the coverage measured in the release) stay true.
CRASH_AT_START = (
    "agent/src/aeamc/agent/daemon.py",
    "    async def start(self) -> None:\n        c = self.config\n",
    "    async def start(self) -> None:\n"
    '        c = self.config; raise RuntimeError("broken on purpose")\n',
)
NEVER_HEARTBEATS = (
    "agent/src/aeamc/agent/link.py",
    "    async def heartbeat(self, url: str) -> float:\n        body = {",
    "    async def heartbeat(self, url: str) -> float:\n"
    '        await __import__("asyncio").sleep(3600); body = {  # broken on purpose',
)


def release_coordinator(
    root: Path, settings: dict[str, Any] | None = None
) -> tuple[CoordinatorProcess, Path]:
    """A started coordinator under ``root/coord`` whose update repository is initialised
    with new offline role keys (in ``root/keys``, returned), ready to publish releases.
    ``settings`` are added to its configuration."""
    coord = CoordinatorProcess(
        root / "coord", settings=merge({"updates": {"resign_check_s": 60.0}}, settings or {})
    )
    coord.init()
    keys = root / "keys"
    coord.cli("release", "keygen", str(keys))
    coord.cli("release", "init", "--keys", str(keys))
    coord.start()
    return coord, keys


def fake_release(
    folder: Path, version: str, *, names: tuple[str, ...] = ("agent", "shared")
) -> list[Path]:
    """Wheel-shaped zips: the repository signs bytes, whatever the wheels hold."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        path = folder / f"aeamc_{name}-{version}-py3-none-any.whl"
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(f"aeamc/{name}/__init__.py", f'__version__ = "{version}"\n')
        out.append(path)
    return out


def build_release(
    work: Path, version: str, patch: tuple[str, str, str] | None = None
) -> list[Path]:
    """Wheels of aeamc-shared and aeamc-agent at ``version``, from a copy of the source."""
    sys.path.insert(0, str(REPO / "packaging"))
    try:
        import build as packaging_build
    finally:
        sys.path.remove(str(REPO / "packaging"))
    src = work / f"src-{version}"
    ignore = shutil.ignore_patterns("*.egg-info", "__pycache__", "build", "dist")
    for project in ("shared", "agent"):
        shutil.copytree(REPO / project, src / project, ignore=ignore)
        init = src / project / "src" / "aeamc" / project / "__init__.py"
        text = init.read_text()
        assert f'"{BASE}"' in text
        init.write_text(text.replace(f'"{BASE}"', f'"{version}"'))
    if patch is not None:
        path, old, new = patch
        file = src / path
        text = file.read_text()
        assert text.count(old) == 1 and old.count("\n") == new.count("\n"), old
        file.write_text(text.replace(old, new))
    return packaging_build.build_release(src, work / f"wheels-{version}")
