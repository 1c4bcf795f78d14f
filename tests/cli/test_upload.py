"""``CoordinatorApi.upload``: the digest a client names in its task is always the one it
computed, never one the coordinator claims — a coordinator answering with other bytes'
name is refused, and content it already holds for the client is not sent again."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from aeamc.shared.runtime.coordinatorapi import CoordinatorApi
from aeamc.shared.taskclient import ClientError, ClientSettings

DATA = b"\x00asm\x01\x00\x00\x00"
DIGEST = hashlib.sha256(DATA).hexdigest()


class Scripted(CoordinatorApi):
    """The client's API with the coordinator's answers given, each request recorded."""

    def __init__(self, head: int, stored_digest: str | None) -> None:
        super().__init__(ClientSettings(url="https://127.0.0.1:9", token="t"))
        self.head, self.stored_digest = head, stored_digest
        self.sent: list[tuple[str, str, Any]] = []

    def request(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        self.sent.append((method, path, kw.get("content_type")))
        if method == "HEAD":
            return self.head, None, {}
        return 201, {"digest": self.stored_digest, "kind": "module", "size": len(DATA)}, {}


def test_an_upload_is_named_by_the_digest_computed_here() -> None:
    api = Scripted(head=404, stored_digest=DIGEST)
    assert api.upload("module", DATA) == (DIGEST, True)
    assert api.sent == [
        ("HEAD", f"/v1/content/{DIGEST}", None),
        ("POST", "/v1/modules", "application/wasm"),
    ]


def test_content_the_coordinator_holds_is_not_sent_again() -> None:
    api = Scripted(head=200, stored_digest=None)
    assert api.upload("input", DATA) == (DIGEST, False)
    assert [m for m, _, _ in api.sent] == ["HEAD"]


def test_a_coordinator_naming_other_bytes_is_refused() -> None:
    api = Scripted(head=404, stored_digest="00" * 32)
    with pytest.raises(ClientError, match="named the upload 00"):
        api.upload("input", DATA)
    assert api.sent[-1][1] == "/v1/inputs"
