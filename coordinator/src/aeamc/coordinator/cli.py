"""``aeamc-coordinator``: set up, run and operate a Microblock Coordinator.

Exit status: 0 success, 1 the request was refused or failed, 64 usage error,
69 the coordinator is not reachable, 78 configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aeamc.shared.exits import UsageParser as _Parser
from aeamc.shared.runtime.logs import print_error
from aeamc.shared.runtime.systemd import notify as notify_systemd

from . import __version__, logs
from .config import (
    ConfigError,
    CoordinatorConfig,
    parse_config,
    render_config,
    write_setting,
)
from .console import (
    DEFAULT_CONFIG,
    EX_CONFIG,
    EX_OK,
    EX_UNAVAILABLE,
    Api,
    CliError,
)
from .console import config_path as _config_path
from .console import load as _load
from .console import print_json as _print
from .dbcli import add_db_parser
from .keys import KeyFileError, ensure_identity, load_identity
from .remote import cmd_blocks, cmd_devices, cmd_flags, cmd_receipts, cmd_tasks, cmd_token
from .updates.cli import add_release_parser

#: Gas of one anchor(root) transaction, measured on anvil (cancun); see docs/anchoring.md.
ANCHOR_GAS = 50_576
log = logging.getLogger("aeamc.coordinator")


# -- init and run ---------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    path = _config_path(args)
    if path.exists():
        config = _load(args)
        print(f"using existing configuration {path}")
    else:
        data: dict[str, Any] = {"state_dir": str(Path(args.state_dir).resolve())}
        if args.port is not None:
            data["server"] = {"port": args.port}
        if args.host is not None:
            data.setdefault("server", {})["host"] = args.host
        if args.cluster_id is not None:
            data["protocol"] = {"cluster_id": args.cluster_id}
        try:
            config = parse_config(data)
        except ConfigError as exc:
            raise CliError(f"configuration error: {exc}", EX_CONFIG) from None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_config(config))
        print(f"wrote configuration {path}")
    config.state_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(config.state_dir, 0o700)
    try:
        key, created = ensure_identity(config.key_ref)
    except KeyFileError as exc:
        raise CliError(f"configuration error: {exc}", EX_CONFIG) from None
    if created:
        print(f"created identity: coordinator_id {key.device_id}")
    else:
        print(f"identity exists: coordinator_id {key.device_id}")
    _init_ca(config, key.device_id)
    if config.chain.enabled:
        _init_wallet(config)
    tokens_dir = config.state_dir / "tokens"
    tokens_dir.mkdir(mode=0o700, exist_ok=True)
    tokens = asyncio.run(_initial_tokens(config, key, tokens_dir))
    for role, token in tokens.items():
        print(f"{role} token (also saved in {tokens_dir / (role + '.token')}): {token}")
    return EX_OK


def _init_ca(config: CoordinatorConfig, coordinator_id: str) -> None:
    from .ca import CaError, CertificateAuthority

    try:
        ca, created = CertificateAuthority.ensure(config.state_dir, config.ca_key, coordinator_id)
    except CaError as exc:
        raise CliError(f"configuration error: {exc}", EX_CONFIG) from None
    print(
        f"{'created' if created else 'using'} certificate authority "
        f"{CertificateAuthority.cert_path(config.state_dir)}\n"
        f"CA fingerprint (SHA-256): {ca.fingerprint}"
    )


def _init_wallet(config: CoordinatorConfig) -> None:
    from .anchoring.wallet import WalletError, ensure_key

    try:
        created = ensure_key(config.wallet_ref)
    except WalletError as exc:
        raise CliError(f"configuration error: {exc}", EX_CONFIG) from None
    if created:
        print(f"created the anchoring wallet key {_redacted(config.wallet_ref)}")


def _wallet(config: CoordinatorConfig) -> Any:
    from .anchoring.wallet import WalletError, ensure_wallet

    try:
        wallet, created = ensure_wallet(config.wallet_ref)
    except WalletError as exc:
        raise CliError(f"configuration error: {exc}", EX_CONFIG) from None
    print(f"{'created' if created else 'using'} anchoring wallet {wallet.address}")
    return wallet


def _redacted(ref: Any) -> str:
    from aeamc.shared.runtime.pkcs11 import Pkcs11Uri, is_pkcs11_uri

    return Pkcs11Uri.parse(ref).redacted if is_pkcs11_uri(ref) else str(ref)


async def _initial_tokens(config: CoordinatorConfig, key: Any, tokens_dir: Path) -> dict[str, str]:
    from aeamc.shared.tasks.registry import discover

    from .service import Coordinator
    from .storage import open_database

    created: dict[str, str] = {}
    db = open_database(config.database, config.db_path)
    db.open()
    try:
        c = Coordinator(config, key, db, discover())
        for role in ("operator", "client"):
            path = tokens_dir / f"{role}.token"
            if path.exists():
                continue
            token = (await c.tokens.create_token(role, label=f"initial {role}")).token
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(token + "\n")
            created[role] = token
    finally:
        db.close()
    return created


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    try:
        key = load_identity(config.key_ref)
    except KeyFileError as exc:
        raise CliError(f"configuration error: {exc}", EX_CONFIG) from None
    from .db import StateInUse, lock_state
    from .workers import Supervisor, worker_command, worker_count

    workers = worker_count(config.server.workers if args.workers is None else args.workers)
    if workers < 1:
        raise CliError("--workers must be 0 (one per core) or more", EX_CONFIG)
    try:  # held while running: `db downgrade` refuses to run under a live coordinator
        lock = lock_state(config.state_dir, exclusive=False)
    except StateInUse as exc:
        raise CliError(f"cannot start: {exc}", EX_CONFIG) from None
    try:
        if workers == 1 or args.worker_port is not None:
            return asyncio.run(_serve(config, key, workers, args.worker_port))
        if not _prepare(config, key):
            return EX_CONFIG
        command = worker_command(args.config, args.verbose, workers)
        return Supervisor(config, command, workers).run()
    finally:
        os.close(lock)


def _prepare(config: CoordinatorConfig, key: Any) -> bool:
    """Bring the state directory to what every worker expects before any starts: the
    schema migrated, the certificate authority and the server certificate made."""
    from .app import CoordinatorService
    from .db import SchemaTooNew

    service = CoordinatorService(config, key)
    try:
        service.db.open()
    except (OSError, SchemaTooNew) as exc:
        log.error("cannot start: %s", exc)
        return False
    finally:
        service.db.close()
    return True


async def _serve(
    config: CoordinatorConfig, key: Any, workers: int = 1, worker_port: int | None = None
) -> int:
    """Run one coordinator process until SIGTERM/SIGINT: the whole coordinator, or one of
    ``workers`` on ``worker_port`` under a supervisor (workers.py)."""
    from .app import CoordinatorService
    from .db import SchemaTooNew
    from .workers import listening_socket, report_ready

    service: CoordinatorService | None = None
    try:
        listen = None if worker_port is None else listening_socket(config.server.host, worker_port)
        service = CoordinatorService(config, key, workers=workers, listen=listen)
        await service.start()
    except (OSError, SchemaTooNew) as exc:
        # Exit 78: systemd's RestartPreventExitStatus stops a restart loop that cannot help.
        log.error("cannot start: %s", exc)
        if service is not None:
            await service.stop()
        return EX_CONFIG
    if worker_port is None:
        ready = config.state_dir / "coordinator.port"
        ready.write_text(f"{service.port}\n")
        notify_systemd("READY=1")  # systemd Type=notify: the API is listening
    else:
        report_ready()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping")
    await service.stop()
    return EX_OK


# -- talking to a running coordinator ----------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    api = Api(_load(args), args.url)
    summary = api.call("GET", "/v1/status")
    health = api.call("GET", "/v1/health")
    summary["health"] = health
    if args.json:
        _print(summary)
        return EX_OK
    print(
        f"coordinator {summary['coordinator_id']}  cluster {summary['cluster_id']}  "
        f"status {health['status']}  up {summary['uptime_s']} s"
    )
    for key in ("devices", "tasks", "proofs", "spot_checks"):
        parts = ", ".join(f"{k} {v}" for k, v in sorted(summary[key].items())) or "none"
        print(f"{key:12} {parts}")
    print(f"{'blocks':12} {summary['blocks']} ({summary['unblocked_receipts']} receipts waiting)")
    print(f"{'CA':12} SHA-256 {health.get('ca_fingerprint')}")
    if "anchoring" in summary:
        print(f"{'anchoring':12} {_anchoring_line(summary['anchoring'])}")
    for term in summary.get("leadership", {}).get("terms", [])[:3]:  # several nodes
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(term["started_at"] / 1000))
        print(f"{'leader':12} term {term['term']}: node {term['node']} since {since} UTC")
    for alert in health.get("alerts", []):
        print(f"{'ALERT':12} {alert['name']} ({alert['severity']}): {alert['summary']}")
        print(f"{'':12} runbook: {alert['runbook_url']}")
    return EX_OK


def _anchoring_line(a: dict[str, Any]) -> str:
    if not a.get("enabled"):
        return "disabled"
    age = a.get("last_final_anchor_age_s")
    balance = a.get("balance_wei")
    parts = [
        a.get("state", "?"),
        "embedded chain (lost on restart)" if a.get("embedded") else f"chain {a.get('chain_id')}",
        f"{a.get('unanchored_blocks', 0)} blocks unanchored",
        f"last final anchor {'never' if age is None else f'{age} s ago'}",
        f"balance {'?' if balance is None else f'{balance / 10**18:.6f} ETH'}",
        f"{a.get('rpc_errors', 0)} RPC errors",
    ]
    return ", ".join(parts)


# -- anchoring --------------------------------------------------------------------------------


def cmd_chain(args: argparse.Namespace) -> int:
    if args.action == "deploy":
        return _chain_deploy(args)
    api = Api(_load(args), args.url)
    a = api.call("GET", "/v1/status").get("anchoring")
    if a is None:
        raise CliError("this coordinator does not report anchoring")
    if args.json:
        _print(a)
        return EX_OK
    balance = a.get("balance_wei")
    last = a.get("last_final_anchor") or {}
    age = a.get("last_final_anchor_age_s")
    rows = [
        ("state", a.get("state")),
        ("chain", "embedded, in-process (lost on restart)" if a.get("embedded") else a.get("rpc")),
        ("chain id", a.get("chain_id")),
        ("head", a.get("head")),
        ("contract", a.get("contract")),
        ("wallet", a.get("wallet")),
        ("balance", "?" if balance is None else f"{balance / 10**18:.6f} ETH ({balance} wei)"),
        ("in flight", a.get("live_anchors", 0)),
        ("unanchored", f"{a.get('unanchored_blocks', 0)} blocks"),
        (
            "last final",
            "never" if age is None else f"{age} s ago, block {last.get('block_number')}",
        ),
        ("gas used", last.get("gas_used", "-")),
        ("RPC errors", a.get("rpc_errors", 0)),
        ("last error", a.get("last_error") or "-"),
    ]
    for name, value in rows:
        print(f"{name:12} {value}")
    if a.get("note"):
        print(f"note: {a['note']}")
    return EX_OK


def _chain_deploy(args: argparse.Namespace) -> int:
    """Deploy MicroblockAnchor with the anchoring wallet, then record its address."""
    config = _load(args)
    path = _config_path(args)
    if not config.chain.rpc_url:
        raise CliError(
            "chain.rpc_url is not set: the embedded chain deploys its own contract at start",
            EX_CONFIG,
        )
    if config.chain.contract and not args.force:
        raise CliError(
            f"chain.contract is already {config.chain.contract}; --force deploys another "
            "(its anchors would start over)"
        )
    from .anchoring.chain import GWEI, Chain, ChainError

    wallet = _wallet(config)
    chain = Chain.connect(config.chain.rpc_url, config.chain.rpc_timeout_s)
    try:
        chain_id = chain.chain_id()
        if config.chain.chain_id and chain_id != config.chain.chain_id:
            raise CliError(
                f"{chain.label} is chain {chain_id}, chain.chain_id says {config.chain.chain_id}",
                EX_CONFIG,
            )
        balance = chain.balance(wallet.address)
        if balance == 0:
            raise CliError(
                f"the wallet {wallet.address} has no funds on chain {chain_id}: send it some "
                "ether (a deployment costs about 615,000 gas), then run this again"
            )
        address = chain.deploy(
            wallet,
            cap_wei=int(config.chain.max_fee_gwei * GWEI),
            priority_wei=int(config.chain.priority_fee_gwei * GWEI),
        )
        fees = chain.market_fees(int(config.chain.priority_fee_gwei * GWEI), 10**30)
        price = (fees.max_fee_per_gas - fees.max_priority_fee_per_gas) // 2 + (
            fees.max_priority_fee_per_gas
        )
    except ChainError as exc:
        raise CliError(str(exc)) from None
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot use {chain.label}: {exc}", EX_UNAVAILABLE) from None
    write_setting(path, "chain", "contract", address)
    print(f"deployed MicroblockAnchor at {address} on chain {chain_id}")
    per_anchor = ANCHOR_GAS * price / 10**18
    per_day = per_anchor * 86_400 / config.chain.anchor_interval_s
    print(
        f"each anchor uses about {ANCHOR_GAS:,} gas: {per_anchor:.6f} ETH at today's "
        f"{price / GWEI:.3g} gwei; one every {config.chain.anchor_interval_s:g} s is at most "
        f"{per_day:.4f} ETH a day (raise chain.anchor_interval_s to anchor less often)"
    )
    print(f"wrote chain.contract to {path}; restart the coordinator to anchor there")
    return EX_OK


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="aeamc-coordinator", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"aeamc-coordinator {__version__}")
    p.add_argument("--config", help=f"configuration file (default {DEFAULT_CONFIG})")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    init = sub.add_parser("init", help="create configuration, state, identity and tokens")
    init.add_argument("--state-dir", default="/var/lib/microblock-coordinator")
    init.add_argument("--port", type=int)
    init.add_argument("--host")
    init.add_argument("--cluster-id", type=int)
    init.set_defaults(func=cmd_init)

    rn = sub.add_parser("run", help="run the coordinator")
    rn.add_argument(
        "--workers",
        type=int,
        help="worker processes sharing the port (default: [server] workers; 0: one per core)",
    )
    rn.add_argument("--worker-port", type=int, help=argparse.SUPPRESS)  # set by the supervisor
    rn.set_defaults(func=cmd_run)

    def remote(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("--url", help="coordinator URL (default: from the configuration)")
        return sp

    st = remote("status", "summary of a running coordinator")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=cmd_status)

    dv = remote("devices", "list, show, approve, quarantine, tag, export or forget (erase) devices")
    dv.add_argument(
        "action", choices=["list", "show", "approve", "quarantine", "tag", "export", "forget"]
    )
    dv.add_argument("device_id", nargs="?")
    dv.add_argument("--reason")
    dv.add_argument(
        "--add",
        action="append",
        default=[],
        metavar="TAG",
        help="tag: give the device this placement tag (repeatable)",
    )
    dv.add_argument(
        "--remove",
        action="append",
        default=[],
        metavar="TAG",
        help="tag: take this tag away (repeatable; the device's own tags are its owner's)",
    )
    dv.add_argument("-o", "--output", help="file for export (default stdout; written 0600)")
    dv.add_argument("--yes", action="store_true", help="forget without asking")
    dv.add_argument("--json", action="store_true")
    dv.set_defaults(func=cmd_devices)

    tk = remote("tasks", "submit, show or list tasks")
    tk.add_argument("action", choices=["submit", "show", "list"])
    tk.add_argument("task_id", nargs="?", help="the task to show")
    tk.add_argument("--kind", default="sha256-chain", help="task kind to submit")
    tk.add_argument("--params", default="{}", help="the kind's parameters, as JSON")
    tk.add_argument("--chunks", type=int, default=1, help="chunks to split the task into")
    tk.add_argument("--replicas", type=int, help="devices that each run the task (default 1)")
    tk.add_argument(
        "--verified",
        action="store_true",
        help="show: include the output only once verified (exit 75 if it is not); "
        "list: only tasks whose result is verified (docs/verification.md)",
    )
    tk.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="show: wait up to this long for the result to be verified",
    )
    tk.set_defaults(func=cmd_tasks)

    bl = remote("blocks", "list, show or export microblocks")
    bl.add_argument("action", choices=["list", "show", "export"])
    bl.add_argument("height", nargs="?", type=int)
    bl.add_argument("-o", "--output", help="file for export (default stdout)")
    bl.set_defaults(func=cmd_blocks)

    ch = remote("chain", "deploy the anchor contract, or show the anchoring status")
    ch.add_argument("action", choices=["deploy", "status"])
    ch.add_argument("--force", action="store_true", help="deploy even if a contract is set")
    ch.add_argument("--json", action="store_true")
    ch.set_defaults(func=cmd_chain)

    rc = remote("receipts", "proof bundles of receipts (SPEC §8)")
    rc.add_argument("action", choices=["proof"])
    rc.add_argument("task_id")
    rc.add_argument("device_id")
    rc.set_defaults(func=cmd_receipts)

    fl = remote("flags", "feature flags (SPEC §10): set a rollout percent, list, history")
    fl.add_argument("action", choices=["set", "list", "history"])
    fl.add_argument("name", nargs="?")
    fl.add_argument("--percent", type=int, help="share of devices the flag is on for, 0..100")
    fl.add_argument("--by", help="who made the change (default: the token's label)")
    fl.add_argument("--json", action="store_true")
    fl.set_defaults(func=cmd_flags)

    to = remote("token", "create a token")
    to.add_argument("action", choices=["create"])
    to.add_argument("--role", choices=["enroll", "client", "operator"], default="enroll")
    to.add_argument("--label")
    to.add_argument("--ttl-s", type=int)
    to.add_argument("--uses", type=int)
    to.set_defaults(func=cmd_token)

    add_release_parser(sub, _Parser)
    add_db_parser(sub, _Parser)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.configure(1 if args.verbose else 0)
    try:
        return int(args.func(args))
    except CliError as exc:
        print_error(f"aeamc-coordinator: {exc}")
        return exc.status
    except KeyFileError as exc:
        print_error(f"aeamc-coordinator: {exc}")
        return EX_CONFIG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
