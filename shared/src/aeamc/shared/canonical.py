"""Canonical bytes of signed messages (SPEC §1).

Signing input = ``b"AEAMC/1\\n"`` + RFC 8785 (JCS) of the object without ``signature``.
The domain prefix keeps an AEAMC signature from ever being valid in another protocol that
signs JCS objects with the same key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import rfc8785

from .errors import ValidationError

DOMAIN_PREFIX = b"AEAMC/1\n"
#: I-JSON's exact integer range (RFC 7493): anything beyond cannot round-trip through JCS.
MAX_SAFE_INT = 2**53 - 1


def canonical_json(obj: Any) -> bytes:
    """RFC 8785 bytes of ``obj``; refuses floats because signed objects carry none."""
    _reject_floats(obj, "")
    try:
        return rfc8785.dumps(obj)
    except rfc8785.CanonicalizationError as exc:
        raise ValidationError("", f"cannot canonicalize: {exc}") from exc


def signing_input(message: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in message.items() if k != "signature"}
    return DOMAIN_PREFIX + canonical_json(body)


def _reject_floats(obj: Any, path: str) -> None:
    if isinstance(obj, float):
        raise ValidationError(path or "$", "floats are not allowed in signed objects")
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            if not isinstance(key, str):
                raise ValidationError(path or "$", "object keys must be strings")
            _reject_floats(value, f"{path}.{key}" if path else key)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _reject_floats(value, f"{path}[{i}]")
    elif isinstance(obj, int) and not isinstance(obj, bool) and abs(obj) > MAX_SAFE_INT:
        raise ValidationError(path or "$", "integer outside the exact JSON range")
