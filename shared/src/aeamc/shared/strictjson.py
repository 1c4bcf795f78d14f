"""JSON as the protocol takes it from a peer: RFC 8259 text in UTF-8 with one meaning.

Python's ``json`` accepts ``NaN``, ``Infinity`` and ``-Infinity``, which are not JSON,
and keeps the last of a member given twice, where another parser may keep the first or
refuse: two readers of one body (a signature check and the code that acts on it, or a
proxy and a daemon) could then see two different messages. ``loads_strict`` refuses
both, and any body that is not UTF-8 or not JSON at all, or nested deeper than
``MAX_DEPTH`` arrays and objects: the parser recurses once a level, and how deep it may
go must not depend on the interpreter's recursion limit or the stack of the thread that
parses (a deep enough body crashes the process instead of raising).

Both refusals are ``JsonError`` (``code`` ``invalid_json``, a ``ProtocolError``): the
input is refused before anything looks at its meaning, so nothing changes because of
it. ``AmbiguousJson`` marks the bodies that a lax parser would have taken.
"""

from __future__ import annotations

import json
import re
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


#: Deepest nesting of arrays and objects taken; protocol messages use fewer than ten.
MAX_DEPTH = 64

#: What changes the nesting depth or the string state, found by the regex engine so that
#: only these characters are looked at in Python.
_STRUCTURE = re.compile(rb'["\\\[\]{}]')


def nesting_depth(raw: bytes | str) -> int:
    """The deepest nesting of arrays and objects in ``raw``, brackets in strings ignored
    (exact for well-formed JSON; on other input, a figure the parser refuses anyway)."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else raw
    depth = deepest = 0
    in_string = False
    skip_to = -1
    for match in _STRUCTURE.finditer(data):
        at = match.start()
        if at < skip_to:
            continue  # the character after a backslash
        char = data[at]
        if in_string:
            if char == 0x5C:  # backslash
                skip_to = at + 2
            elif char == 0x22:  # quote
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        else:  # ] }
            depth -= 1
    return deepest


def too_deep(raw: bytes | str, limit: int = MAX_DEPTH) -> bool:
    """Whether ``raw`` nests arrays and objects deeper than ``limit``. A body with at most
    ``limit`` opening brackets in all cannot, so most bodies are answered by two counts
    in C without the scan of ``nesting_depth``."""
    if isinstance(raw, bytes):
        openers = raw.count(b"[") + raw.count(b"{")
    else:
        openers = raw.count("[") + raw.count("{")
    return openers > limit and nesting_depth(raw) > limit


def loads_strict(raw: bytes | str) -> Any:
    """Parse ``raw`` (UTF-8 bytes, or text) or raise ``JsonError`` saying what is wrong."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
        if too_deep(raw):
            raise JsonError(f"not valid JSON: nested deeper than {MAX_DEPTH} levels")
        return json.loads(
            text, parse_constant=_no_constant, object_pairs_hook=_no_duplicate_members
        )
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise JsonError(f"not valid JSON: {exc}") from None
