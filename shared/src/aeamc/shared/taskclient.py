"""A client's connection to a coordinator: where it is, the token, and whom to trust.

Settings come from, in order: the command line, the environment (``AEAMC_URL``,
``AEAMC_TOKEN``, ``AEAMC_CA_FINGERPRINT``, ``AEAMC_CA_FILE``), then a small TOML file
(``--config``, ``AEAMC_CLIENT_CONFIG`` or ``~/.config/aeamc/client.toml``) with the keys
``url``, ``token``, ``ca_fingerprint`` and ``ca_file``. The coordinator's certificate is
always verified: against ``ca_file``, or against the CA the coordinator serves at
``/v1/ca``, accepted only if its SHA-256 is ``ca_fingerprint`` (as ``aeamc-coordinator
status`` shows it). Without either nothing is sent, the token least of all.

Standard library only: a client machine needs no more than ``aeamc-shared``.
"""

from __future__ import annotations

import json
import os
import ssl
import tomllib
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .runtime.tls import client_context, pem_fingerprint

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


class CoordinatorApi:
    """Requests to one coordinator, over TLS verified against its CA, with the token."""

    def __init__(self, settings: ClientSettings, timeout_s: float = 70.0) -> None:
        self.settings = settings
        self.timeout_s = timeout_s
        self._context: ssl.SSLContext | None = None

    def _ssl(self) -> ssl.SSLContext:
        if self._context is None:
            self._context = client_context(ca_pem=self._trusted_ca())
        return self._context

    def _trusted_ca(self) -> str:
        s = self.settings
        if s.ca_file is not None:
            try:
                pem = s.ca_file.read_text()
            except OSError as exc:
                raise ClientError(f"{s.ca_file}: {exc.strerror}") from None
            if s.ca_fingerprint and pem_fingerprint(pem) != s.ca_fingerprint:
                raise ClientError(f"{s.ca_file} is not the CA with the fingerprint given")
            return pem
        # Fetched before anything else is sent; believed only if it is the pinned one.
        status, body, _ = self._send("GET", "/v1/ca", context=client_context(ca_pem=None))
        served = body.get("ca_certificate") if status == 200 and isinstance(body, dict) else None
        if not isinstance(served, str):
            raise ClientError(f"{s.url}/v1/ca answered {status} without a CA certificate")
        try:
            got = pem_fingerprint(served)
        except ValueError:
            raise ClientError(f"{s.url}/v1/ca sent no PEM certificate") from None
        if got != s.ca_fingerprint:
            raise ClientError(
                f"{s.url} presents a CA with fingerprint {got}, not the one given: "
                "not the coordinator you meant (or the fingerprint is wrong)"
            )
        return served

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
    ) -> tuple[int, Any, Mapping[str, str]]:
        """Send with the token; the status, the body (JSON decoded) and the headers."""
        return self._send(method, path, body, raw=raw, content_type=content_type, auth=True)

    def _send(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        raw: bytes | None = None,
        content_type: str = "application/json",
        auth: bool = False,
        context: ssl.SSLContext | None = None,
    ) -> tuple[int, Any, Mapping[str, str]]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        # The URL is https:// (load_settings refuses anything else).
        url = self.settings.url + path
        req = urllib.request.Request(url, data=data, method=method)  # noqa: S310
        if data is not None:
            req.add_header("Content-Type", content_type)
        if auth:
            req.add_header("Authorization", f"Bearer {self.settings.token}")
        try:
            ctx = context or self._ssl()
            with urllib.request.urlopen(req, timeout=self.timeout_s, context=ctx) as resp:  # noqa: S310
                payload, status, headers = resp.read(), resp.status, resp.headers
        except urllib.error.HTTPError as exc:
            payload, status, headers = exc.read(), exc.code, exc.headers
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ClientError(f"{self.settings.url}: {reason}") from None
        kind = headers.get("Content-Type", "")
        answer: Any = payload
        if kind.startswith("application/json") and method != "HEAD":
            try:
                answer = json.loads(payload)
            except ValueError:
                raise ClientError(f"{self.settings.url}{path}: the answer is not JSON") from None
        return status, answer, headers

    def checked(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """``request``, which must succeed (2xx); its body. ClientError with the
        coordinator's own message otherwise."""
        status, answer, _ = self.request(method, path, body, **kw)
        if 200 <= status < 300:
            return answer
        error = answer.get("error") if isinstance(answer, dict) else None
        if isinstance(error, dict):
            raise ClientError(
                f"{error.get('message', 'refused')} (HTTP {status} {error.get('code')})",
                status=status,
                code=error.get("code"),
            )
        raise ClientError(f"{method} {path}: HTTP {status}", status=status)
