"""Canonical bytes of signed messages (SPEC §1).

Signing input = ``b"AEAMC/1\\n"`` + RFC 8785 (JCS) of the object without ``signature``.
The domain prefix keeps an AEAMC signature from ever being valid in another protocol that
signs JCS objects with the same key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import rfc8785

from .errors import ValidationError

DOMAIN_PREFIX = b"AEAMC/1\n"
#: I-JSON's exact integer range (RFC 7493): anything beyond cannot round-trip through JCS.
MAX_SAFE_INT = 2**53 - 1
_ENCODER = json.JSONEncoder(
    ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
)


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 bytes of ``obj``; refuses floats because signed objects carry none.

    Without floats, and with only ASCII member names, JCS is exactly what the standard
    library's C encoder writes with sorted keys, no whitespace and no ASCII escaping:
    integers print the same, strings escape the same characters the same way (ES6
    ``JSON.stringify`` rules), and code-point order equals UTF-16 order for ASCII names.
    That path is an order of magnitude faster than the pure-Python ``rfc8785``, which
    still handles every other case (and reports what cannot be canonicalized).
    """
    if _plain_ascii(obj):
        try:
            return _ENCODER.encode(obj).encode("utf-8")
        except (ValueError, TypeError):  # e.g. a lone surrogate: let rfc8785 say what
            pass
    _check(obj, "")  # raises, naming the path, if anything is not allowed
    try:
        return rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError as exc:
        raise ValidationError("", f"cannot canonicalize: {exc}") from exc


def signing_input(message: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in message.items() if k != "signature"}
    return DOMAIN_PREFIX + canonical_json(body)


def _plain_ascii(obj: Any) -> bool:
    """True when ``obj`` holds no float, no inexact integer, and only ASCII string keys.

    The quick walk for the common case; anything else goes the slow way, which names
    the offending path in its error.
    """
    if isinstance(obj, str) or obj is None or obj is True or obj is False:
        return True
    if isinstance(obj, int):
        return -MAX_SAFE_INT <= obj <= MAX_SAFE_INT
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not (isinstance(key, str) and key.isascii() and _plain_ascii(value)):
                return False
        return True
    if isinstance(obj, (list, tuple)):
        return all(_plain_ascii(v) for v in obj)
    return False


def _check(obj: Any, path: str) -> bool:
    """Refuse floats, non-string keys and inexact integers; say whether every key is ASCII."""
    if isinstance(obj, str):
        return True
    if isinstance(obj, float):
        raise ValidationError(path or "$", "floats are not allowed in signed objects")
    ascii_keys = True
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise ValidationError(path or "$", "object keys must be strings")
            ascii_keys = _check(value, f"{path}.{key}" if path else key) and ascii_keys
            ascii_keys = ascii_keys and key.isascii()
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            ascii_keys = _check(value, f"{path}[{i}]") and ascii_keys
    elif isinstance(obj, int) and not isinstance(obj, bool) and abs(obj) > MAX_SAFE_INT:
        raise ValidationError(path or "$", "integer outside the exact JSON range")
    return ascii_keys
