"""``aeamc devnet``: the subcommand the coordinator adds to the ``aeamc`` tool.

The ``aeamc`` tool belongs to the protocol core and imports no application; it finds this
subcommand through the ``aeamc.commands`` entry point group, which the coordinator's
distribution registers. The devnet itself (``devnet.py``, ``devnet_demo.py``) is imported
only when it runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from aeamc.shared.exits import EX_FAILURE


def add_parser(sub: Any) -> None:
    """Add ``devnet`` to the ``aeamc`` subcommands ``sub`` (argparse's subparsers)."""
    dn = sub.add_parser("devnet", help="a local network: chain, coordinator and agents")
    dn.add_argument("action", choices=["up", "demo"], help="up: keep running; demo: run tasks")
    dn.add_argument("--agents", type=int, default=5, help="number of agents (default 5)")
    dn.add_argument("--tasks", type=int, default=12, help="tasks the demo submits (default 12)")
    dn.add_argument("--dir", help="working folder (default: a temporary one)")
    dn.add_argument("--timeout", type=float, default=100.0, help="demo time limit in seconds")
    dn.add_argument("--keep", action="store_true", help="keep the demo's folder afterwards")
    dn.add_argument(
        "--stay",
        action="store_true",
        help="demo: keep the network running after the summary, until Ctrl-C or SIGTERM",
    )
    dn.add_argument(
        "--picture",
        metavar="PATH",
        default="mandelbrot.png",
        help="demo: where to write the PNG the fleet renders (default ./mandelbrot.png)",
    )
    dn.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``devnet up`` or ``devnet demo``; 1 when the network fails, 130 on Ctrl-C."""
    from . import devnet, devnet_demo

    root = Path(args.dir) if args.dir else None
    try:
        if args.action == "demo":
            return devnet_demo.demo(
                args.agents,
                args.tasks,
                root,
                args.timeout,
                args.keep,
                stay=args.stay,
                picture=Path(args.picture),
            )
        return devnet.up(args.agents, root)
    except devnet.DevnetError as exc:
        print(f"aeamc: devnet: {exc}", file=sys.stderr)
        return EX_FAILURE
    except KeyboardInterrupt:
        return 130
