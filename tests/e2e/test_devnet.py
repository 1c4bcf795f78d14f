"""The demo network end to end: real anvil, coordinator and agent processes on loopback,
finding each other over mDNS. Asserts the outcomes the demo promises, from the running
system: who ran what, who was skipped and why, the cheater caught, blocks anchored, and
a receipt verified against the chain by the auditor's tool."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from aeamc.coordinator import devnet


def test_demo_network_outcomes(tmp_path: Path) -> None:
    out = io.StringIO()
    net = devnet.Devnet(tmp_path / "net", agents=5, out=out)
    try:
        net.up()
        submitted = devnet.submit_mix(net, 9)
        deadline = time.monotonic() + 120
        while not devnet.finished(net, 9, cheaters=1):
            assert time.monotonic() < deadline, devnet.progress_line(net, 9)
            time.sleep(1)
        result = devnet.summary(net, submitted)
        by_label = {d["label"]: d for d in result["devices"].values()}

        assert result["tasks"] == {"completed": 9}
        cheater = by_label["DEMO CHEATER"]
        assert cheater["state"] == "quarantined"
        assert cheater["spot_checks"].get("failed", 0) >= 1
        assert "failed spot-check" in cheater["state_reason"]
        low = by_label["phone, low battery"]
        assert low["ran"] == {} and "below 0.5" in low["eligibility"]
        hot = by_label["hot tablet"]
        assert hot["ran"] == {} and set(hot["refused"]) == {"too_hot"}
        honest = [by_label["phone on charge"], by_label["server on mains"]]
        # The cheater fakes half its chunks, so a check of 4 chunks misses it 1 time in 16:
        # a proof of its that passed its check stays to its credit (a replicated task may
        # still have an honest proof too); every other task it ran was voided at its
        # quarantine and run again by an honest device.
        kept = cheater["spot_checks"].get("passed", 0)
        assert 9 - kept <= sum(sum(d["ran"].values()) for d in honest) <= 9
        assert all(set(d["spot_checks"]) <= {"passed", "not sampled"} for d in honest)
        anchoring = result["anchoring"]
        assert result["blocks"] >= 1 and anchoring["blocks_anchored"] == result["blocks"]
        correct, total = result["classify_correct"]
        assert total == 3 * 64 and correct / total >= 0.9

        code, text = devnet.verify_one_receipt(net, submitted)
        assert code == 0, text
        assert "ok anchored on chain" in text
    finally:
        net.stop()
    assert all(not p.alive() for p in net.procs)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_stops_everything_devnet_up_started(tmp_path: Path, sig: signal.Signals) -> None:
    """``aeamc devnet up`` ended by a service manager or a closed terminal leaves no chain,
    coordinator or agent behind (each runs in a session of its own, out of reach of the
    terminal's signals)."""
    root = tmp_path / "net"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aeamc.shared.cli",
            "devnet",
            "up",
            "--agents",
            "1",
            "--dir",
            str(root),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = ""
        for line in proc.stdout:
            seen += line
            if "Ctrl-C stops it" in line:
                break
        assert "devnet is up" in seen, seen
        started = _processes_under(root)
        assert len(started) >= 3, started  # anvil, the coordinator, the agent
        proc.send_signal(sig)
        assert proc.wait(timeout=60) == 0  # the normal end of `up`
        psutil.wait_procs(started, timeout=10)
        assert _processes_under(root) == []
    finally:
        proc.kill()
        for p in _processes_under(root):
            p.kill()


def _processes_under(root: Path) -> list[psutil.Process]:
    """Processes whose command line names a path below ``root``."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(str(root) in arg for arg in p.info["cmdline"] or ()):
            found.append(p)
    return found
