"""A client's connection to a coordinator: where it is, the token, and whom to trust.

Settings come from, in order: the command line, the environment (``AEAMC_URL``,
``AEAMC_TOKEN``, ``AEAMC_CA_FINGERPRINT``, ``AEAMC_CA_FILE``), then a small TOML file
(``--config``, ``AEAMC_CLIENT_CONFIG`` or ``~/.config/aeamc/client.toml``) with the keys
``url``, ``token``, ``ca_fingerprint`` and ``ca_file``. The coordinator's certificate is
always verified: against ``ca_file``, or against the CA the coordinator serves at
``/v1/ca``, accepted only if its SHA-256 is ``ca_fingerprint`` (as ``aeamc-coordinator
status`` shows it). Without either nothing is sent, the token least of all.

Standard library only: a client machine needs no more than ``aeamc-shared``. The
requests themselves are made by ``aeamc.shared.runtime.coordinatorapi``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CONFIG_ENV = "AEAMC_CLIENT_CONFIG"
DEFAULT_CONFIG = Path("~/.config/aeamc/client.toml")
_KEYS = ("url", "token", "ca_fingerprint", "ca_file")


class ClientError(Exception):
    """The request could not be made or was refused; the message says why, for people.
    ``status`` is the HTTP status (0: no answer), ``code`` the error's code if any."""

    def __init__(self, message: str, *, status: int = 0, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class SettingsError(ClientError):
    """The connection settings are missing or wrong: nothing was sent."""


@dataclass(frozen=True)
class ClientSettings:
    url: str
    token: str
    ca_fingerprint: str | None = None
    ca_file: Path | None = None


def load_settings(
    overrides: Mapping[str, str | None],
    env: Mapping[str, str] = os.environ,
    config: str | None = None,
) -> ClientSettings:
    """The settings from ``overrides`` (the command line), ``env`` and the config file;
    ClientError naming what is missing or wrong."""
    path = Path(config or env.get(CONFIG_ENV) or DEFAULT_CONFIG).expanduser()
    from_file: dict[str, Any] = {}
    if config or env.get(CONFIG_ENV) or path.exists():
        try:
            from_file = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise SettingsError(f"{path}: no such configuration file") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise SettingsError(f"{path}: {exc}") from None
        unknown = sorted(set(from_file) - set(_KEYS))
        if unknown:
            raise SettingsError(f"{path}: unknown keys {', '.join(unknown)} (known: {_KEYS})")
    values: dict[str, Any] = {}
    for key in _KEYS:
        value = overrides.get(key) or env.get(f"AEAMC_{key.upper()}") or from_file.get(key)
        if value is not None and not isinstance(value, str):
            raise SettingsError(f"{key}: expected a string")
        values[key] = value or None
    if not values["url"]:
        raise SettingsError("no coordinator URL: set AEAMC_URL, url in the config, or --url")
    parts = urlsplit(values["url"])
    if parts.scheme != "https" or not parts.hostname:
        raise SettingsError(f"url: expected https://host:port, not {values['url']!r}")
    if not values["token"]:
        raise SettingsError("no client token: set AEAMC_TOKEN or token in the config")
    fp = values["ca_fingerprint"]
    if fp is not None:
        fp = fp.replace(":", "").lower()
        if len(fp) != 64 or not set(fp) <= set("0123456789abcdef"):
            raise SettingsError("ca_fingerprint: the 64 hex digits of a SHA-256")
    if fp is None and values["ca_file"] is None:
        raise SettingsError(
            "no way to check the coordinator: set AEAMC_CA_FINGERPRINT (from "
            "`aeamc-coordinator status`) or AEAMC_CA_FILE"
        )
    ca_file = Path(values["ca_file"]).expanduser() if values["ca_file"] else None
    return ClientSettings(values["url"].rstrip("/"), values["token"], fp, ca_file)
