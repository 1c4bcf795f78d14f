"""Requests from a client to one coordinator, over TLS checked against the coordinator's
CA (:mod:`aeamc.shared.taskclient` says where the settings come from), with its token."""

from __future__ import annotations

import hashlib
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from ..taskclient import ClientError, ClientSettings
from .tls import client_context, pem_fingerprint

#: Where each kind of content is uploaded, and as what.
UPLOADS = {
    "module": ("/v1/modules", "application/wasm"),
    "input": ("/v1/inputs", "application/octet-stream"),
}


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

    def upload(self, kind: str, data: bytes) -> tuple[str, bool]:
        """Make ``data`` (a ``module`` or an ``input``) content of this client's; its
        SHA-256 and whether it was sent (False: the coordinator already had it for us).

        The digest is computed here, never taken from the coordinator: an answer naming
        other bytes is a ClientError, so a task never names what was not uploaded."""
        digest = hashlib.sha256(data).hexdigest()
        status, _, _ = self.request("HEAD", f"/v1/content/{digest}")
        if status == 200:
            return digest, False
        path, ctype = UPLOADS[kind]
        stored = self.checked("POST", path, raw=data, content_type=ctype)
        named = stored.get("digest") if isinstance(stored, dict) else None
        if named != digest:
            raise ClientError(f"{self.settings.url}{path} named the upload {named}, not {digest}")
        return digest, True
