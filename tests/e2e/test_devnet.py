"""The demo network end to end: real anvil, coordinator and agent processes on loopback,
finding each other over mDNS. Asserts the outcomes the demo promises, from the running
system: who ran what, who was skipped and why, the cheater caught, blocks anchored, a
receipt verified against the chain by the auditor's tool, and the picture the devices
rendered, checked pixel for pixel against the same kernel run here."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from aeamc.coordinator import devnet, devnet_demo, devnet_picture
from aeamc.shared import wasm
from tests.support.png import decode_png


def test_demo_network_outcomes(tmp_path: Path) -> None:
    out = io.StringIO()
    net = devnet.Devnet(tmp_path / "net", agents=5, out=out)
    module = devnet_picture.build_kernel(tmp_path / "kernel")
    picture = tmp_path / "mandelbrot.png"
    total = 9 + devnet_picture.BANDS
    try:
        net.up()
        outcome = devnet_demo.run(net, module, 9, timeout_s=180, picture=picture)
        result = outcome.result
        assert outcome.ok, out.getvalue()
        by_label = {d["label"]: d for d in result["devices"].values()}

        assert result["tasks"] == {"completed": total}
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
        assert total - kept <= sum(sum(d["ran"].values()) for d in honest) <= total
        assert all(set(d["spot_checks"]) <= {"passed", "not sampled"} for d in honest)
        # The table counts the picture's tasks with the others.
        wasm_runs = sum(d["ran"].get("wasm", 0) for d in result["devices"].values())
        assert wasm_runs >= devnet_picture.BANDS
        anchoring = result["anchoring"]
        assert result["blocks"] >= 1 and anchoring["blocks_anchored"] == result["blocks"]
        correct, total_digits = result["classify_correct"]
        assert total_digits == 3 * 64 and correct / total_digits >= 0.9

        code, text = outcome.verify
        assert code == 0, text
        assert "ok anchored on chain" in text

        _check_picture(outcome, picture, module, net.labels, out.getvalue())
    finally:
        net.stop()
    assert all(not p.alive() for p in net.procs)


def _check_picture(
    outcome: devnet_demo.Outcome,
    path: Path,
    module: bytes,
    labels: dict[str, str],
    printed: str,
) -> None:
    """The PNG the demo wrote holds, pixel for pixel, what the same module renders here
    for every band and chunk; each band was rendered by an honest device; the summary
    says where the file is, previews it, and names each band's device."""
    assert outcome.written == path.resolve()
    png = decode_png(path.read_bytes())
    assert (png.width, png.height, png.color_type) == (
        devnet_picture.WIDTH,
        devnet_picture.HEIGHT,
        3,
    )
    assert png.palette == devnet_picture.palette()
    compiled = wasm.check_module(module)
    expected = b"".join(
        wasm.run_chunk(
            compiled,
            devnet_picture.band_input(band),
            chunk,
            devnet_picture.CHUNKS,
            fuel=devnet_picture.FUEL,
            memory_bytes=devnet_picture.MEMORY_MB << 20,
        ).output
        for band in range(devnet_picture.BANDS)
        for chunk in range(devnet_picture.CHUNKS)
    )
    assert len(expected) == devnet_picture.WIDTH * devnet_picture.HEIGHT
    assert png.pixels == expected
    assert 255 in expected and len(set(expected)) > 20  # the set, and its rim
    honest = {d for d, label in labels.items() if label in ("phone on charge", "server on mains")}
    for band in outcome.picture.bands:
        assert band.by is not None and band.provers and set(band.provers) <= honest
        names = ", ".join(labels[d] for d in band.provers)
        first, last = devnet_picture.band_rows(band.index)
        assert f"band {band.index + 1}, rows {first}–{last - 1}: {names}" in printed
    assert f"picture   {path.resolve()}" in printed
    preview = devnet_picture.preview(
        expected, png.width, png.height, devnet_picture.PREVIEW_COLUMNS
    )
    assert all(f"|{row}|" in printed for row in preview)
    assert "wasm ×" in printed


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
