"""``aeamc-agent``: set up, run and inspect the device agent.

Exit status: 0 success, 1 runtime failure, 64 usage error, 73 refusing to replace the
device identity (``init`` without ``--force``), 78 configuration error (bad or missing
config, key file with loose permissions, simulated telemetry not enabled).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp

from aeamc.shared.exits import EX_CANTCREAT, EX_CONFIG, EX_FAILURE, EX_OK, EX_USAGE
from aeamc.shared.exits import UsageParser as _Parser
from aeamc.shared.messages import Privacy, sign
from aeamc.shared.runtime.clock import now_ms
from aeamc.shared.runtime.logs import configure as configure_logs
from aeamc.shared.runtime.logs import print_error
from aeamc.shared.runtime.pkcs11 import is_pkcs11_uri
from aeamc.shared.runtime.tls import TlsError

from . import __version__
from .client import CoordinatorClient, Reply, Unreachable
from .config import (
    DEFAULT_STATE_DIR,
    ConfigError,
    config_from_mapping,
    config_path,
    coordinator_urls,
    load_config,
    render_config,
)
from .keystore import KeyFileError, create_identity, describe, identity_exists, load_identity
from .link import ERASED
from .state import CoordinatorPin, StateError, ensure_dir
from .status import live_status, offline_status, render_text
from .telemetry import TelemetryError, make_source
from .tls import AgentTls

log = logging.getLogger("aeamc.agent")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="aeamc-agent", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"aeamc-agent {__version__}")
    parser.add_argument(
        "--config",
        metavar="PATH",
        help="configuration file (default: $AEAMC_AGENT_CONFIG or /etc/aeamc/agent.toml)",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log detail")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    init = sub.add_parser("init", help="create the state directory, identity key and config")
    init.add_argument(
        "--state-dir", type=Path, help=f"state directory (default {DEFAULT_STATE_DIR})"
    )
    init.add_argument("--coordinator-url", help="coordinator base URL (default: find it over mDNS)")
    init.add_argument("--token", help="enrollment token from the coordinator's operator")
    init.add_argument(
        "--force", action="store_true", help="replace an existing identity (a new device!)"
    )
    init.set_defaults(func=cmd_init)

    run = sub.add_parser("run", help="run the agent daemon in the foreground")
    run.set_defaults(func=cmd_run)
    # What the launcher of `run` starts (docs/updates.md); also the daemon without updates.
    daemon = sub.add_parser("daemon", help="run the daemon itself, without the update launcher")
    daemon.set_defaults(func=cmd_daemon)

    status = sub.add_parser("status", help="show identity, coordinator, telemetry, work, outbox")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=cmd_status)

    privacy = sub.add_parser(
        "privacy", help="export or erase what the coordinator holds about this device"
    )
    psub = privacy.add_subparsers(dest="privacy_command", required=True, parser_class=_Parser)
    export = psub.add_parser("export", help="everything the coordinator holds, as JSON")
    export.add_argument("-o", "--output", metavar="FILE", help="write here (default stdout)")
    export.set_defaults(func=cmd_privacy)
    forget = psub.add_parser("forget", help="have the coordinator erase this device")
    forget.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    forget.set_defaults(func=cmd_privacy)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logs(args.verbose)
    args.config_path = config_path(args.config)
    return int(args.func(args))


def cmd_init(args: argparse.Namespace) -> int:
    path: Path = args.config_path
    if path.exists():
        if args.state_dir or args.coordinator_url or args.token:
            print(
                f"aeamc-agent: {path} exists; edit it instead of passing "
                "--state-dir/--coordinator-url/--token",
                file=sys.stderr,
            )
            return EX_USAGE
        try:
            config = load_config(path)
        except ConfigError as exc:
            return _config_error(exc)
    else:
        text = render_config(
            state_dir=(args.state_dir or DEFAULT_STATE_DIR).absolute(),
            coordinator_url=args.coordinator_url,
            token=args.token,
        )
        try:
            config_from_mapping(tomllib.loads(text))
        except ConfigError as exc:
            return _config_error(exc)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if args.token else 0o644)
            with os.fdopen(fd, "w") as f:
                f.write(text)
        except OSError as exc:
            print(f"aeamc-agent: cannot write {path}: {exc.strerror}", file=sys.stderr)
            return EX_CANTCREAT
        config = load_config(path)
        print(f"wrote {path}")
    try:
        ensure_dir(config.state_dir)
        existed = identity_exists(config.state_dir, config.identity_key)
        key = create_identity(config.state_dir, force=args.force, identity_key=config.identity_key)
    except KeyFileError as exc:
        print(f"aeamc-agent: {exc}", file=sys.stderr)
        return EX_CANTCREAT
    except OSError as exc:
        print(f"aeamc-agent: cannot create {config.state_dir}: {exc.strerror}", file=sys.stderr)
        return EX_CANTCREAT
    if existed:
        print("replaced the identity: to coordinators this is a new device", file=sys.stderr)
    print(f"device id {key.device_id}")
    print(f"identity  {describe(config.state_dir, config.identity_key)}")
    return EX_OK


def cmd_run(args: argparse.Namespace) -> int:
    """The daemon under the launcher, which switches and rolls back releases."""
    try:
        config = load_config(args.config_path)
        # What the daemon would refuse at start, refused here with the same status 78
        # (an HSM key is left to the daemon: one session on the token is enough).
        if not is_pkcs11_uri(config.identity_key):
            load_identity(config.state_dir, config.identity_key)
        make_source(config.telemetry_source, config.telemetry_profile)
    except (ConfigError, KeyFileError, TelemetryError, StateError) as exc:
        return _config_error(exc)
    if not config.updates_enabled:
        return cmd_daemon(args)
    from .launcher import Launcher

    return Launcher(config, args.config_path, args.verbose).run()


def cmd_daemon(args: argparse.Namespace) -> int:
    from .daemon import Agent

    try:
        config = load_config(args.config_path)
        agent = Agent(config)
    except (ConfigError, KeyFileError, TelemetryError, StateError, TlsError) as exc:
        return _config_error(exc)
    try:
        asyncio.run(agent.run_until_signalled())
    except OSError as exc:
        log.error("cannot run: %s", exc)
        return EX_FAILURE
    return agent.exit_code


def cmd_status(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config_path)
    except ConfigError as exc:
        return _config_error(exc)
    status = live_status(config.state_dir)
    if status is None:
        device_id = public_key = identity_error = source_error = None
        try:
            key = load_identity(config.state_dir, config.identity_key)
            device_id, public_key = key.device_id, key.public_key.hex()
        except KeyFileError as exc:
            identity_error = str(exc)
        try:
            source = make_source(config.telemetry_source, config.telemetry_profile)
        except TelemetryError as exc:
            source, source_error = None, str(exc)
        status = offline_status(
            config,
            device_id=device_id,
            public_key=public_key,
            identity_error=identity_error,
            source=source,
            source_error=source_error,
        )
    if args.json:
        json.dump(status, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(render_text(status))
    return EX_OK


def cmd_privacy(args: argparse.Namespace) -> int:
    """A request signed with the device key to the coordinator the device enrolled with."""
    try:
        config = load_config(args.config_path)
        key = load_identity(config.state_dir, config.identity_key)
        pin = CoordinatorPin.load(config.state_dir)
    except (ConfigError, KeyFileError, StateError) as exc:
        return _config_error(exc)
    if pin is None:
        print("aeamc-agent: this device has not enrolled with a coordinator", file=sys.stderr)
        return EX_FAILURE
    if pin.state == ERASED:
        print("aeamc-agent: this device was already erased from its coordinator", file=sys.stderr)
        return EX_FAILURE
    url = next(iter(coordinator_urls(config.coordinator_url)), None) or pin.url
    if not url:
        print("aeamc-agent: no coordinator URL (set coordinator_url)", file=sys.stderr)
        return EX_FAILURE
    try:
        agent_tls = AgentTls(
            config.state_dir,
            key.device_id,
            coordinator_id=pin.coordinator_id,
            expected_ca=config.coordinator_ca_fingerprint,
        )
    except TlsError as exc:
        return _config_error(exc)
    if agent_tls.ca_pem is None:
        print(
            "aeamc-agent: the coordinator's CA is not pinned yet; run the daemon until it "
            "has enrolled, then try again",
            file=sys.stderr,
        )
        return EX_FAILURE
    forget = args.privacy_command == "forget"
    if forget and not args.yes:
        if not sys.stdin.isatty():
            print("aeamc-agent: not erasing without confirmation: pass --yes", file=sys.stderr)
            return EX_USAGE
        answer = input(
            f"Erase device {key.device_id} from coordinator {pin.coordinator_id} at {url}?\n"
            "Its telemetry history, addresses, capabilities, public key and record are deleted "
            "for good; its receipts in microblocks stay, and this identity cannot enroll again.\n"
            "Type 'yes' to continue: "
        )
        if answer.strip().lower() != "yes":
            print("not confirmed; nothing was erased", file=sys.stderr)
            return EX_FAILURE
    body = {
        "type": "privacy",
        "device_id": key.device_id,
        "action": "erase" if forget else "export",
        "timestamp": now_ms(),
    }
    message = sign(Privacy, body, key).to_dict()
    method, path = (
        ("DELETE", f"/v1/devices/{key.device_id}")
        if forget
        else ("POST", f"/v1/devices/{key.device_id}/export")
    )
    try:
        reply = asyncio.run(
            _privacy_request(config.request_timeout_s, agent_tls, method, url, path, body=message)
        )
    except Unreachable as exc:
        print(f"aeamc-agent: coordinator unreachable: {exc}", file=sys.stderr)
        return EX_FAILURE
    if reply.status != 200:
        print(
            f"aeamc-agent: refused: HTTP {reply.status} {reply.error_code or ''} "
            f"{reply.error_message}".rstrip(),
            file=sys.stderr,
        )
        return EX_FAILURE
    if forget:
        dataclasses.replace(pin, state=ERASED).save(config.state_dir)
        print(f"device {key.device_id} erased from coordinator {pin.coordinator_id}")
        print("this identity is no longer enrolled; to take part again: aeamc-agent init --force")
        return EX_OK
    text = json.dumps(reply.body, indent=2, sort_keys=True) + "\n"
    if args.output in (None, "-"):
        sys.stdout.write(text)
    else:
        fd = os.open(args.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        print(f"wrote {args.output}", file=sys.stderr)
    return EX_OK


async def _privacy_request(
    timeout_s: float, agent_tls: AgentTls, method: str, url: str, path: str, *, body: Any
) -> Reply:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        return await CoordinatorClient(session, tls=agent_tls).send(method, url, path, body)


def _config_error(exc: Exception) -> int:
    print_error(f"aeamc-agent: configuration error: {exc}")
    return EX_CONFIG


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
