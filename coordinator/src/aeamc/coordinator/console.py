"""What every ``aeamc-coordinator`` command shares: its configuration, its errors and exit
statuses, and calls to the running coordinator's API.

``cli`` and the ``release`` commands (``updates/cli``) both build on this module, so
neither imports the other's internals.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from aeamc.shared.envelope import decode_reply, error_of
from aeamc.shared.exits import EX_CONFIG, EX_FAILURE, EX_OK, EX_UNAVAILABLE, EX_USAGE

from .config import ConfigError, CoordinatorConfig, load_config

__all__ = [
    "EX_CONFIG",
    "EX_FAILURE",
    "EX_OK",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "Api",
    "CliError",
    "config_path",
    "load",
    "print_json",
]

DEFAULT_CONFIG = Path("/etc/aeamc/coordinator.toml")


class CliError(Exception):
    """A command ends with ``message`` on stderr and exit ``status``."""

    def __init__(self, message: str, status: int = EX_FAILURE) -> None:
        super().__init__(message)
        self.status = status


def config_path(args: argparse.Namespace) -> Path:
    """``--config``, else ``$AEAMC_COORDINATOR_CONFIG``, else ``DEFAULT_CONFIG``."""
    return Path(args.config or os.environ.get("AEAMC_COORDINATOR_CONFIG") or DEFAULT_CONFIG)


def load(args: argparse.Namespace) -> CoordinatorConfig:
    """The configuration the command names; ``CliError`` exit 78 when it is not valid."""
    try:
        return load_config(config_path(args))
    except ConfigError as exc:
        raise CliError(f"configuration error: {exc}", EX_CONFIG) from None


class Api:
    """The running coordinator's HTTP API, called with the token of ``role`` from the state
    folder; a refusal or an unreachable coordinator is a ``CliError``."""

    def __init__(self, config: CoordinatorConfig, url: str | None, role: str = "operator") -> None:
        port_file = config.state_dir / "coordinator.port"
        port = config.server.port
        if port == 0 and port_file.exists():
            port = int(port_file.read_text().strip())
        host = config.server.host
        if host in ("0.0.0.0", "::", ""):  # noqa: S104
            host = "127.0.0.1"
        self.base = (url or f"https://{host}:{port}").rstrip("/")
        token_file = config.state_dir / "tokens" / f"{role}.token"
        self.token = token_file.read_text().strip() if token_file.exists() else None
        self.ssl = _ca_context(config)
        #: Longest one request may ask the coordinator to hold a task's answer.
        self.max_wait_s = config.server.max_wait_s

    def call(
        self, method: str, path: str, body: Any = None, *, raw: bool = False, timeout: float = 30
    ) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base + path, data=data, method=method)  # noqa: S310
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=self.ssl) as resp:  # noqa: S310
                payload = resp.read()
        except urllib.error.HTTPError as exc:
            err = error_of(decode_reply(exc.read()))
            if err is not None and "code" in err and "message" in err:
                message = f"{err['code']}: {err['message']}"
            else:
                message = f"HTTP {exc.code}"
            raise CliError(message) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(
                f"cannot reach the coordinator at {self.base}: {reason}", EX_UNAVAILABLE
            ) from None
        return payload if raw else json.loads(payload)


def _ca_context(config: CoordinatorConfig) -> Any:
    """TLS 1.3 to our own API, trusting only our CA (its certificate names this host)."""
    from aeamc.shared.runtime.tls import client_context, system_client_context

    from .ca import CertificateAuthority

    path = CertificateAuthority.cert_path(config.state_dir)
    try:
        return client_context(ca_pem=path.read_text())
    except FileNotFoundError:
        # Not set up here: only a certificate the system trusts could be accepted.
        return system_client_context()


def print_json(obj: Any) -> None:
    """``obj`` on stdout as indented JSON with sorted keys."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
