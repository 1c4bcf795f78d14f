"""JSON as the protocol takes it from a peer: RFC 8259 text in UTF-8 with one meaning.

Python's ``json`` accepts ``NaN``, ``Infinity`` and ``-Infinity``, which are not JSON,
and keeps the last of a member given twice, where another parser may keep the first or
refuse: two readers of one body (a signature check and the code that acts on it, or a
proxy and a daemon) could then see two different messages. ``loads_strict`` refuses
both, and any body that is not UTF-8 or not JSON at all.

Both refusals are ``JsonError`` (``code`` ``invalid_json``, a ``ProtocolError``): the
input is refused before anything looks at its meaning, so nothing changes because of
it. ``AmbiguousJson`` marks the bodies that a lax parser would have taken.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import ProtocolError


class JsonError(ProtocolError):
    """The bytes are not strict JSON."""

    code = "invalid_json"


class AmbiguousJson(JsonError):
    """Well-formed to a lax parser, but with a member twice or a non-finite number."""


def _no_constant(name: str) -> Any:
    raise AmbiguousJson(f"{name} is not a JSON number")


def _no_duplicate_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise AmbiguousJson(f"member {key!r} appears twice in one object")
        out[key] = value
    return out


def loads_strict(raw: bytes | str) -> Any:
    """Parse ``raw`` (UTF-8 bytes, or text) or raise ``JsonError`` saying what is wrong."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        return json.loads(
            text, parse_constant=_no_constant, object_pairs_hook=_no_duplicate_members
        )
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise JsonError(f"not valid JSON: {exc}") from None
