"""``aeamc``: the operator's and auditor's tool; it needs no coordinator.

Exit status: 0 success, 1 the input is not valid (a refused block, a failed check),
64 usage error, 66 input file missing or unreadable.

``aeamc verify`` prints one line per SPEC §8 step, ``ok|FAIL step: detail``, stopping at
the first failure; it needs web3 (``pip install aeamc-shared[chain]``), imported only then.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from . import __version__, microblock, taskcli
from .bundle import STEPS, verify_bundle
from .errors import MicroblockError
from .exits import EX_FAILURE as EX_INVALID
from .exits import EX_NOINPUT, EX_OK, EX_UNAVAILABLE, EX_USAGE
from .exits import UsageParser as _Parser
from .rpcurls import rpc_url_problem

#: The entry point group through which other distributions add ``aeamc`` subcommands (the
#: coordinator's ``devnet``), so this tool never imports them.
COMMANDS = "aeamc.commands"


def _read_input(path: str) -> bytes | None:
    """The bytes of ``path`` (``-``: stdin); ``None``, said on stderr, if it cannot be read."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        print(f"aeamc: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return None


def _inspect_microblock(args: argparse.Namespace) -> int:
    data = _read_input(args.file)
    if data is None:
        return EX_NOINPUT
    if args.hex:
        try:
            data = bytes.fromhex(data.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            print("aeamc: invalid microblock: input is not hex", file=sys.stderr)
            return EX_INVALID
    try:
        block = microblock.decode(data)
    except MicroblockError as exc:
        print(f"aeamc: invalid microblock: {exc}", file=sys.stderr)
        return EX_INVALID
    json.dump(block.to_json(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EX_OK


def _verify(args: argparse.Namespace) -> int:
    """SPEC §8: check a receipt's proof bundle, the last step against the chain itself."""
    data = _read_input(args.bundle)
    if data is None:
        return EX_NOINPUT
    try:
        bundle = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        print(f"FAIL bundle: not JSON: {exc}")
        print("aeamc: verification failed at step 'bundle'", file=sys.stderr)
        return EX_INVALID
    problem = rpc_url_problem(args.rpc, allow_plain_http=args.allow_plain_http)
    if problem is not None:
        print(f"aeamc: --rpc {problem} (--allow-plain-http)", file=sys.stderr)
        return EX_USAGE
    from .chain import web3_chain_check

    anchor = bundle.get("anchor") if isinstance(bundle, dict) else None
    claimed = anchor.get("contract") if isinstance(anchor, dict) else None
    if args.contract and isinstance(claimed, str) and claimed.lower() != args.contract.lower():
        print(f"note: asking contract {args.contract}, not the bundle's {claimed}")
    check = web3_chain_check(args.rpc, contract=args.contract, timeout_s=args.timeout)
    steps = verify_bundle(bundle, check)
    for step in steps:
        print(f"{'ok' if step.ok else 'FAIL'} {step.name}: {step.detail}")
    failed = next((step.name for step in steps if not step.ok), None)
    if failed is None and len(steps) == len(STEPS):
        print("receipt verified")
        return EX_OK
    print(f"aeamc: verification failed at step '{failed}'", file=sys.stderr)
    return EX_INVALID


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aeamc", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"aeamc {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    inspect = sub.add_parser("inspect", help="decode protocol artefacts")
    what = inspect.add_subparsers(dest="what", required=True, parser_class=_Parser)
    mb = what.add_parser("microblock", help="decode raw microblock bytes to JSON")
    mb.add_argument("file", help="file with the raw block bytes, or - for stdin")
    mb.add_argument("--hex", action="store_true", help="the input is hex text, not raw bytes")
    mb.set_defaults(func=_inspect_microblock)

    verify = sub.add_parser(
        "verify", help="check a receipt proof bundle (SPEC §8) against the chain"
    )
    verify.add_argument("bundle", help="bundle JSON file, or - for stdin")
    verify.add_argument(
        "--rpc",
        required=True,
        help="JSON-RPC URL of the bundle's chain: https://, or http:// to this host's loopback",
    )
    verify.add_argument(
        "--allow-plain-http",
        action="store_true",
        help="take an http:// --rpc to another host (anyone on the path could answer for it)",
    )
    verify.add_argument(
        "--contract", help="MicroblockAnchor address to ask (default: the bundle's own)"
    )
    verify.add_argument("--timeout", type=float, default=30.0, help="RPC timeout in seconds")
    verify.set_defaults(func=_verify)
    taskcli.add_parser(sub)
    _add_commands(sub)
    return parser


def _add_commands(sub: Any) -> None:
    """Add the subcommands other installed distributions register (``COMMANDS``).

    Each entry point names a function that adds its subcommand to ``sub``. Without the
    coordinator installed, ``devnet`` still answers, saying what it needs."""
    from importlib.metadata import entry_points

    added = set()
    for entry in entry_points(group=COMMANDS):
        entry.load()(sub)
        added.add(entry.name)
    if "devnet" not in added:
        dn = sub.add_parser("devnet", help="a local network (needs aeamc-coordinator)")
        dn.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
        dn.set_defaults(func=_devnet_missing)


def _devnet_missing(args: argparse.Namespace) -> int:
    print("aeamc: devnet needs aeamc-coordinator and aeamc-agent installed", file=sys.stderr)
    return EX_UNAVAILABLE


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
