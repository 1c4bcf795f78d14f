"""Clients' content over the real API (TLS, tokens, device certificates): status codes,
headers and the body limits of uploads, and who may read what back."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from aeamc.shared.wasmabi import MAX_MODULE_BYTES
from tests.support.coordinator import CoordinatorProcess, running_coordinator
from tests.support.device import SimDevice
from tests.support.kernels import kernels, mandelbrot_input


@pytest.fixture(scope="module")
def coordinator(
    tmp_path_factory: pytest.TempPathFactory, store: str
) -> Iterator[CoordinatorProcess]:
    """One coordinator per store (asking for ``store`` makes pytest start one for each)."""
    with running_coordinator(tmp_path_factory.mktemp("content")) as coord:
        yield coord


def upload(
    coord: CoordinatorProcess, path: str, data: bytes, ctype: str, token: str | None
) -> tuple[int, object]:
    return coord.request("POST", path, raw_body=data, content_type=ctype, token=token, device=None)


def test_uploads_answer_with_the_digest_and_where_to_read_it(
    coordinator: CoordinatorProcess,
) -> None:
    client = coordinator.token("client")
    module = kernels()["mandelbrot"]
    digest = hashlib.sha256(module).hexdigest()
    status, body = upload(coordinator, "/v1/modules", module, "application/wasm", client)
    assert (status, body) == (201, {"digest": digest, "kind": "module", "size": len(module)})
    status, _ = upload(coordinator, "/v1/modules", module, "application/wasm", client)
    assert status == 200  # already held
    status, raw = coordinator.request("GET", f"/v1/content/{digest}", token=client, device=None)
    assert (status, raw) == (200, module)
    data = mandelbrot_input()
    status, body = upload(coordinator, "/v1/inputs", data, "application/octet-stream", client)
    assert status == 201 and body["kind"] == "input"  # type: ignore[index]


@pytest.mark.parametrize(
    ("path", "data", "ctype", "token", "expected"),
    [
        ("/v1/modules", b"not wasm", "application/wasm", "client", (400, "bad_module")),
        ("/v1/modules", b"\0asm", "text/plain", "client", (415, "unsupported_media_type")),
        ("/v1/inputs", b"abc", "application/json", "client", (415, "unsupported_media_type")),
        ("/v1/modules", b"\0asm", "application/wasm", None, (401, "unauthorized")),
        ("/v1/inputs", b"abc", "application/octet-stream", "enroll", (403, "forbidden")),
        (
            "/v1/modules",
            b"\0" * (MAX_MODULE_BYTES + 1),
            "application/wasm",
            "client",
            (413, "body_too_large"),
        ),
    ],
)
def test_bad_uploads_are_refused_and_store_nothing(  # noqa: PLR0917
    coordinator: CoordinatorProcess,
    path: str,
    data: bytes,
    ctype: str,
    token: str | None,
    expected: tuple[int, str],
) -> None:
    content = coordinator.state_dir / "content"
    before = sorted(p.name for p in content.iterdir()) if content.exists() else []
    bearer = coordinator.issue_token("enroll", uses=1) if token == "enroll" else None
    bearer = bearer or (coordinator.token(token) if token else None)
    status, body = upload(coordinator, path, data, ctype, bearer)
    assert (status, body["error"]["code"]) == expected, body  # type: ignore[index]
    after = sorted(p.name for p in content.iterdir()) if content.exists() else []
    assert after == before


def test_reading_back_needs_the_right_caller(coordinator: CoordinatorProcess) -> None:
    client = coordinator.token("client")
    secret = b"a client's private input " + Path(__file__).name.encode()
    status, body = upload(coordinator, "/v1/inputs", secret, "application/octet-stream", client)
    digest = body["digest"]  # type: ignore[index]
    other = coordinator.issue_token("client", label="other client")
    for token, expected in ((other, 404), (None, 401), (coordinator.token("operator"), 200)):
        status, _ = coordinator.request("GET", f"/v1/content/{digest}", token=token, device=None)
        assert status == expected, token
    # A device, over its own certificate, holds no task naming it: not found.
    device = SimDevice(coordinator.url, port=1)
    enroll = coordinator.issue_token("enroll", uses=1)
    status, answer = coordinator.request("POST", "/v1/enroll", device.enroll_message(enroll))
    assert status == 202 and answer["state"] == "active"  # type: ignore[index]
    status, _ = coordinator.request("GET", f"/v1/content/{digest}", device=device)
    assert status == 404
    status, _ = coordinator.request("GET", "/v1/content/NOT-A-DIGEST", token=client, device=None)
    assert status == 404
