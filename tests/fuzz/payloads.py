"""Malformed bodies, wrong values and message mutations shared by the fuzz families."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

from aeamc.shared.identity import SigningKey, sign_message

#: A body every JSON endpoint refuses whatever its route: no message, task, token request,
#: reason or login has a member of this name.
INVALID_OBJECT = {"zz_unknown": 1}
_INVALID = json.dumps(INVALID_OBJECT)

BODY_LIMIT = 16 * 1024 * 1024


def bad_json_bodies() -> list[tuple[str, bytes]]:
    """(label, body): bodies that are not JSON, or JSON no endpoint accepts."""
    out = [
        ("empty", b""),
        ("open brace", b"{"),
        ("truncated member", b'{"type": "poa", "seq":'),
        ("truncated array", b"[1, 2"),
        ("truncated string", b'{"a": "abc'),
        ("invalid utf-8", b'{"a": "\xff\xfe"}'),
        ("latin-1", '{"a": "é"}'.encode("latin-1")),
        ("utf-16", _INVALID.encode("utf-16")),
        ("utf-32", _INVALID.encode("utf-32")),
        ("utf-8 bom", b"\xef\xbb\xbf" + _INVALID.encode()),
        ("nan", b"NaN"),
        ("nan member", b'{"timestamp": NaN}'),
        ("infinity member", b'{"timestamp": Infinity}'),
        ("-infinity member", b'{"timestamp": -Infinity}'),
        ("duplicate keys", b'{"type": "poa", "type": "enroll"}'),
        ("duplicate nested keys", b'{"pot": {"a": 1, "a": 2}, "output": ""}'),
        ("deep arrays", b"[" * 10_000 + b"]" * 10_000),
        ("deep objects", b'{"a":' * 10_000 + b"1" + b"}" * 10_000),
        ("deep unterminated", b"[" * 100_000),
        ("1e400 integer", b"1" + b"0" * 400),
        ("1e400 member", b'{"seq": 1' + b"0" * 400 + b"}"),
        ("5000-digit integer", b'{"timestamp": ' + b"9" * 5000 + b"}"),
        ("1e400 float", b'{"timestamp": 1e400}'),
        ("-0.0", b'{"seq": -0.0}'),
        ("lone surrogate", b'"\\ud800"'),
        ("surrogate member", b'{"type": "\\udfff"}'),
        ("nul member", b'{"type": "poa\\u0000"}'),
        ("raw control char", b'{"type": "po\x01a"}'),
        ("nul byte", b"\x00"),
        ("trailing garbage", _INVALID.encode() + b"garbage"),
        ("two documents", _INVALID.encode() * 2),
        ("whitespace", b" " * 10_000),
        ("null", b"null"),
        ("true", b"true"),
        ("zero", b"0"),
        ("string", b'"poa"'),
        ("empty array", b"[]"),
        ("array of objects", b"[" + b",".join([_INVALID.encode()] * 10) + b"]"),
        ("single quotes", b"{'type': 'poa'}"),
        ("comment", b'/* x */ {"type": "poa"}'),
        ("hex number", b'{"seq": 0x10}'),
        ("leading zero", b'{"seq": 01}'),
        ("100k members", json.dumps({f"k{i}": i for i in range(100_000)}).encode()),
        ("1M-element array", b"[" + b"0," * 999_999 + b"0]"),
        ("2 MiB string", json.dumps({"zz_unknown": "a" * (2 << 20)}).encode()),
        ("2 MiB key", json.dumps({"a" * (2 << 20): 1}).encode()),
    ]
    return out


def huge_bodies() -> list[tuple[str, bytes]]:
    pad = BODY_LIMIT - 64
    return [
        ("just under the body limit", b'{"zz_unknown": "' + b"a" * pad + b'"}'),
        ("over the body limit", b'{"zz_unknown": "' + b"a" * (BODY_LIMIT + 1024) + b'"}'),
    ]


#: Values of the wrong type or out of range for every member of every message. Strings are
#: chosen so that none can be a valid id, kind, role, token, hex or URL.
WRONG_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1.5,
    2**53,
    2**64,
    -(2**63) - 1,
    "",
    "!!",
    "\u202e\u0000",
    "x" * 70_000,
    [],
    [1] * 5_000,
    {},
    INVALID_OBJECT,
]


def paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every member path of a JSON object, objects before their members."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield (*prefix, k)
            yield from paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield (*prefix, i)
            yield from paths(v, (*prefix, i))


def object_paths(obj: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(obj, dict):
        yield prefix
        for k, v in obj.items():
            yield from object_paths(v, (*prefix, k))


def replace(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    out = copy.deepcopy(obj)
    target = out
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return out


def delete(obj: Any, path: tuple[Any, ...]) -> Any:
    out = copy.deepcopy(obj)
    target = out
    for p in path[:-1]:
        target = target[p]
    del target[path[-1]]
    return out


def get(obj: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def resign(message: dict[str, Any], key: SigningKey) -> dict[str, Any] | None:
    """Sign a (possibly malformed) message anew; ``None`` if it cannot even be signed."""
    try:
        return sign_message(message, key)
    except Exception:  # a message the canonical form refuses stays unsigned
        return None


def flip_hex(s: str, i: int) -> str:
    c = s[i]
    return s[:i] + ("0" if c != "0" else "1") + s[i + 1 :]


def dumps(obj: Any) -> bytes:
    return json.dumps(obj).encode()
