"""A real SoftHSM2 token for the PKCS#11 key tests.

One token per test session, in a token directory under the session's tmp path; the
``SOFTHSM2_CONF`` variable points every process (the daemons included) at it. Each test
names its keys with its own labels, so tests never see each other's keys.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.anvil import anvil, anvil_bin  # noqa: F401

MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
)
USER_PIN = "4321"
SO_PIN = "87654321"
TOKEN = "aeamc"


@dataclass(frozen=True)
class SoftHsm:
    module: str
    conf: Path
    pin_file: Path

    def uri(self, label: str, *, pin: str = "source") -> str:
        query = f"module-path={self.module}"
        if pin == "source":
            query += f"&pin-source=file://{self.pin_file}"
        elif pin == "value":
            query += f"&pin-value={USER_PIN}"
        return f"pkcs11:token={TOKEN};object={label}?{query}"


def _module() -> str:
    for path in MODULE_CANDIDATES:
        if Path(path).exists():
            return path
    pytest.fail("SoftHSM2 is not installed: apt-get install -y softhsm2 (requirements/debian.txt)")


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    util = shutil.which("softhsm2-util")
    if util is None:
        pytest.fail("softhsm2-util is missing: apt-get install -y softhsm2")
    module = _module()
    root = tmp_path_factory.mktemp("softhsm")
    tokens = root / "tokens"
    tokens.mkdir()
    conf = root / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n"
    )
    pin_file = root / "user.pin"
    fd = os.open(pin_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(USER_PIN + "\n")
    previous = os.environ.get("SOFTHSM2_CONF")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    try:
        subprocess.run(
            [
                util,
                "--init-token",
                "--free",
                "--label",
                TOKEN,
                "--so-pin",
                SO_PIN,
                "--pin",
                USER_PIN,
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        yield SoftHsm(module, conf, pin_file)
    finally:
        if previous is None:
            os.environ.pop("SOFTHSM2_CONF", None)
        else:
            os.environ["SOFTHSM2_CONF"] = previous


@pytest.fixture
def label() -> Callable[[str], str]:
    """A fresh object label per call, so tests sharing the token never collide."""
    return lambda prefix: f"{prefix}-{uuid.uuid4().hex[:10]}"
