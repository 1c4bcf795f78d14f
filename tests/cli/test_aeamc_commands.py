"""`aeamc devnet` comes from the coordinator's distribution, found through an entry point."""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import entry_points

from aeamc.shared import cli

AEAMC = [sys.executable, "-m", "aeamc.shared.cli"]


def test_the_coordinator_registers_devnet() -> None:
    found = {e.name: e.value for e in entry_points(group=cli.COMMANDS)}
    assert found["devnet"] == "aeamc.coordinator.devnet_cli:add_parser"


def test_devnet_is_a_subcommand_with_its_options() -> None:
    args = cli.build_parser().parse_args(["devnet", "demo", "--agents", "3", "--tasks", "7"])
    assert (args.action, args.agents, args.tasks, args.keep) == ("demo", 3, 7, False)
    assert args.func.__module__ == "aeamc.coordinator.devnet_cli"
    assert args.picture == "mandelbrot.png"  # the current folder: it outlives the demo's
    args = cli.build_parser().parse_args(["devnet", "demo", "--picture", "/tmp/m.png"])
    assert args.picture == "/tmp/m.png"


def test_the_demo_refuses_a_picture_path_it_cannot_write_before_starting(tmp_path) -> None:
    proc = subprocess.run(
        [*AEAMC, "devnet", "demo", "--picture", str(tmp_path / "nowhere" / "m.png")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert f"there is no folder {tmp_path / 'nowhere'}" in proc.stderr
    assert "Starting" not in proc.stdout


def test_devnet_without_the_coordinator_says_what_it_needs(monkeypatch) -> None:
    monkeypatch.setattr("importlib.metadata.entry_points", lambda group: [])
    args = cli.build_parser().parse_args(["devnet", "demo", "--agents", "3"])
    assert args.func(args) == 69


def test_usage_errors_exit_64() -> None:
    proc = subprocess.run(
        [*AEAMC, "devnet", "sideways"], capture_output=True, timeout=60, check=False
    )
    assert proc.returncode == 64
    assert b"invalid choice" in proc.stderr


def test_the_parser_exits_64_on_usage_errors() -> None:
    parser = cli.build_parser()
    assert isinstance(parser, argparse.ArgumentParser)
    proc = subprocess.run([*AEAMC, "--nope"], capture_output=True, timeout=60, check=False)
    assert proc.returncode == 64
