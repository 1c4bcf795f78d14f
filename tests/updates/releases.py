"""Real agent releases for the update tests: wheels built from patched copies of the tree."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

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
