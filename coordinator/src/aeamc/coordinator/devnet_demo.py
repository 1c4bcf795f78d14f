"""``aeamc devnet demo`` (what ``make demo`` runs): a local network does a client's work,
and shows what happened.

It starts the network (``devnet.py``), submits a mix of built-in tasks and a picture that
a WebAssembly kernel renders band by band on the devices (``devnet_picture.py``), follows
them, and ends with a summary read back from the running system: who ran what, and why the
others did not; the cheater caught; blocks anchored; the picture, put together from
verified results only, written as a PNG and previewed in the terminal; and one receipt
checked against the chain by ``aeamc verify``. It succeeds only when all of that holds.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import devnet_picture
from .devnet import (
    PROFILES,
    Devnet,
    finished,
    print_summary,
    progress_line,
    running,
    submit_mix,
    summary,
    verify_one_receipt,
    wait_until_interrupted,
)
from .devnet_procs import DevnetError

#: Where the picture goes unless ``--picture`` says otherwise (the current folder).
DEFAULT_PICTURE = Path("mandelbrot.png")


@dataclass(frozen=True)
class Outcome:
    """What a demo run ended with."""

    #: :func:`devnet.summary`: per device, the tasks, the chain.
    result: dict[str, Any]
    #: ``aeamc verify``'s exit status and output for one anchored receipt.
    verify: tuple[int, str]
    picture: devnet_picture.Picture
    #: Where the PNG is, or None when the picture was not complete.
    written: Path | None
    #: Every task ended, the cheaters are quarantined, the picture is complete and
    #: verified and written, and the receipt checked out.
    ok: bool


def run(net: Devnet, module: bytes, tasks: int, timeout_s: float, picture: Path) -> Outcome:
    """On a network that is up, submit ``tasks`` built-in tasks and the picture (rendered by
    ``module``), follow them for at most ``timeout_s``, write the picture to ``picture``
    when every band is verified, and print the summary; the outcome (also when time ran
    out: the summary then shows where things stand)."""
    # The picture first: its bands, queued together, spread over the devices.
    image = devnet_picture.submit(net, module)
    net.say(
        f"submitted  {devnet_picture.BANDS} wasm tasks: a {devnet_picture.WIDTH}×"
        f"{devnet_picture.HEIGHT} Mandelbrot picture, a band of rows each, rendered by "
        f"docs/workloads/mandelbrot.c built with clang ({len(module)} bytes of WebAssembly)"
    )
    submitted = [*image.tasks(), *submit_mix(net, tasks)]
    total = len(submitted)
    net.say(f"submitted  {tasks} tasks (sha256-chain and classify-int8)\n")
    cheaters = sum(1 for i in range(net.agents) if PROFILES[i % len(PROFILES)].cheat_fraction)
    deadline = time.monotonic() + timeout_s

    def progress() -> str:
        return progress_line(net, total, f"picture {image.verified}/{devnet_picture.BANDS}")

    while True:
        # The bands are read every time (not only once the rest is done): the progress
        # line counts them.
        complete = devnet_picture.poll(net, image)
        if finished(net, total, cheaters) and complete:
            break
        if time.monotonic() > deadline:
            net.say("the demo ran out of time; the summary shows where things stand")
            break
        net.say(progress())
        time.sleep(2)
    net.say(progress())
    result = summary(net, submitted)
    verify = verify_one_receipt(net, submitted)
    ended = finished(net, total, cheaters)
    complete = devnet_picture.poll(net, image)
    written = devnet_picture.write_png(image, picture) if complete else None
    print_summary(net, result, verify, devnet_picture.report(image, net.labels, written))
    ok = ended and complete and verify[0] == 0
    return Outcome(result, verify, image, written, ok)


def demo(
    agents: int,
    tasks: int,
    root: Path | None,
    timeout_s: float,
    keep: bool,
    *,
    stay: bool = False,
    picture: Path = DEFAULT_PICTURE,
) -> int:
    """Start a network of ``agents``, :func:`run` the demo on it, stop it (unless ``stay``);
    0 when the outcome is ok, else 1. The kernel is built first, so a missing compiler is
    reported (:class:`DevnetError`) before anything starts."""
    started = time.monotonic()
    if not picture.parent.is_dir():
        raise DevnetError(f"--picture {picture}: there is no folder {picture.parent}")
    with tempfile.TemporaryDirectory(prefix="aeamc-kernel-") as build:
        module = devnet_picture.build_kernel(Path(build))
    with running(root, agents, keep) as net:
        net.say(f"Starting a local AEAMC network with {agents} agents in {net.root}")
        net.up()
        for d in net.devices():
            net.say(f"agent      {d['device_id']}  {net.labels.get(d['device_id'], '?')}")
        outcome = run(net, module, tasks, timeout_s, picture)
        net.say(f"\nfinished in {time.monotonic() - started:.0f} s")
        if stay:
            net.say("The network stays up for a look at the dashboard; Ctrl-C stops it.")
            wait_until_interrupted(net)
        else:
            net.say("(`make demo ARGS=--stay` keeps the network up to look at the dashboard)")
        return 0 if outcome.ok else 1
