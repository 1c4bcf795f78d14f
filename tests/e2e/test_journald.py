"""Logs as an operator reads them: ``journalctl -p err`` finds the daemons' errors.

A real systemd-journald runs in a private mount namespace (its own /run/systemd and
/run/log, so the host's journal is not touched). Each command runs with its stderr
connected to journald's stream socket and ``$JOURNAL_STREAM`` naming that socket, as
systemd starts a service; the test then reads the journal back by priority.
Needs root, unshare(1) and systemd-journald; skipped without them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

JOURNALD = next(
    (
        p
        for p in ("/lib/systemd/systemd-journald", "/usr/lib/systemd/systemd-journald")
        if os.path.exists(p)
    ),
    None,
)

pytestmark = pytest.mark.skipif(
    JOURNALD is None
    or os.geteuid() != 0
    or shutil.which("unshare") is None
    or shutil.which("systemd-cat") is None,
    reason="needs root, unshare and systemd-journald",
)

LOGGING = (
    "import logging; from aeamc.shared.runtime.logs import configure; configure(0); "
    "log = logging.getLogger('aeamc.coordinator.anchoring'); "
    "log.info('anchored 3 blocks'); log.warning('fees rose'); log.error('anchoring stalled')"
)


def _service(tag: str, argv: list[str]) -> str:
    """Shell that runs ``argv`` as systemd would a service with SyslogIdentifier=tag."""
    inner = 'export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2); exec "$@"'
    return shlex.join(["systemd-cat", "-t", tag, "sh", "-c", inner, "sh", *argv])


def _in_private_journal(script: str, tmp_path: Path) -> str:
    wrapper = f"""
set -e
mkdir -p /run/systemd /run/log
mount -t tmpfs tmpfs /run/systemd
mount -t tmpfs tmpfs /run/log
mkdir -p /run/systemd/journal
{JOURNALD} >/dev/null 2>&1 &
JOURNALD_PID=$!
trap 'kill $JOURNALD_PID' EXIT
for i in $(seq 100); do [ -S /run/systemd/journal/stdout ] && break; sleep 0.05; done
{script}
"""
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", wrapper],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_errors_are_filed_at_priority_err(tmp_path: Path) -> None:
    python = sys.executable
    config = tmp_path / "absent" / "coordinator.toml"
    script = "\n".join(
        [
            _service("aeamc-test-logs", [python, "-c", LOGGING]),
            _service(
                "aeamc-test-coord",
                [python, "-m", "aeamc.coordinator.cli", "--config", str(config), "run"],
            )
            + " || true",
            _service(
                "aeamc-test-agent",
                [python, "-m", "aeamc.agent", "--config", str(tmp_path / "absent.toml"), "run"],
            )
            + " || true",
            "sleep 0.5",
            "echo '== err'",
            "journalctl -p err -o cat --no-pager -t aeamc-test-logs -t aeamc-test-coord "
            "-t aeamc-test-agent",
            "echo '== warning'",
            "journalctl -p warning -o cat --no-pager -t aeamc-test-logs",
            "echo '== all'",
            "journalctl -o cat --no-pager -t aeamc-test-logs",
        ]
    )
    out = _in_private_journal(script, tmp_path)
    sections = dict(
        (part.split("\n", 1)[0], part.split("\n", 1)[1].splitlines())
        for part in out.split("== ")[1:]
    )
    errors = sections["err"]
    assert any("anchoring stalled" in line for line in errors), out
    assert any("aeamc-coordinator: configuration error" in line for line in errors), out
    assert any("aeamc-agent: configuration error" in line for line in errors), out
    assert not any("anchored 3 blocks" in line or "fees rose" in line for line in errors), out
    warnings = sections["warning"]
    assert any("fees rose" in line for line in warnings)
    assert not any("anchored 3 blocks" in line for line in warnings)
    # Every line is still one JSON object, the prefix taken off by journald.
    assert len(sections["all"]) == 3 and all(line.startswith("{") for line in sections["all"])
