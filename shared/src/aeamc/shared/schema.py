"""Strict, declarative validation of JSON values.

Every message is parsed by a table of field validators. Anything not in the table
(unknown or missing members, wrong JSON type, out-of-range number, oversized string) is
refused with a ``ValidationError`` whose ``field`` is the dotted path of the culprit, so
a client can fix its request and the server never stores half-understood data.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from .canonical import MAX_SAFE_INT
from .errors import ValidationError

Validator = Callable[[Any, str], Any]

#: Marks an optional member in a field table: ``{"token": OPTIONAL(text(64))}``.
_OPTIONAL = object()


def optional(validator: Validator) -> tuple[object, Validator]:
    return (_OPTIONAL, validator)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, (list, tuple)):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def integer(lo: int = 0, hi: int = MAX_SAFE_INT) -> Validator:
    def check(value: Any, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(path, f"expected an integer, got {_type_name(value)}")
        if not lo <= value <= hi:
            raise ValidationError(path, f"must be between {lo} and {hi}")
        return value

    return check


def boolean() -> Validator:
    def check(value: Any, path: str) -> bool:
        if not isinstance(value, bool):
            raise ValidationError(path, f"expected a boolean, got {_type_name(value)}")
        return value

    return check


def text(max_len: int, pattern: str | None = None, *, min_len: int = 1) -> Validator:
    compiled = re.compile(pattern) if pattern else None

    def check(value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise ValidationError(path, f"expected a string, got {_type_name(value)}")
        if len(value) > max_len:
            raise ValidationError(path, f"longer than {max_len} characters")
        if len(value) < min_len:
            raise ValidationError(path, f"shorter than {min_len} characters")
        if compiled is not None and not compiled.fullmatch(value):
            raise ValidationError(path, f"does not match {pattern}")
        return value

    return check


def hex_bytes(nbytes: int | None = None, *, max_bytes: int | None = None) -> Validator:
    """Lowercase hex of exactly ``nbytes`` bytes (or at most ``max_bytes``); kept as str."""

    def check(value: Any, path: str) -> str:
        if not isinstance(value, str):
            raise ValidationError(path, f"expected a hex string, got {_type_name(value)}")
        if nbytes is not None and len(value) != 2 * nbytes:
            raise ValidationError(path, f"must be {2 * nbytes} hex characters")
        if max_bytes is not None and len(value) > 2 * max_bytes:
            raise ValidationError(path, f"longer than {max_bytes} bytes")
        if len(value) % 2 or not _LOWER_HEX.fullmatch(value):
            raise ValidationError(path, "must be lowercase hex")
        return value

    return check


_LOWER_HEX = re.compile(r"[0-9a-f]*")


def nullable(validator: Validator) -> Validator:
    def check(value: Any, path: str) -> Any:
        return None if value is None else validator(value, path)

    return check


def array(item: Validator, max_items: int, *, min_items: int = 0) -> Validator:
    def check(value: Any, path: str) -> tuple[Any, ...]:
        if not isinstance(value, (list, tuple)):
            raise ValidationError(path, f"expected an array, got {_type_name(value)}")
        if len(value) > max_items:
            raise ValidationError(path, f"more than {max_items} items")
        if len(value) < min_items:
            raise ValidationError(path, f"fewer than {min_items} items")
        return tuple(item(v, f"{path}[{i}]") for i, v in enumerate(value))

    return check


def constant(expected: str) -> Validator:
    def check(value: Any, path: str) -> str:
        if value != expected:
            raise ValidationError(path, f"expected {expected!r}", code="wrong_type")
        return expected

    return check


def json_value(*, max_depth: int = 8, max_items: int = 1024, max_str: int = 1 << 20) -> Validator:
    """A free-form JSON value without floats (task params), bounded in every dimension."""

    def walk(value: Any, path: str, depth: int) -> Any:
        if depth > max_depth:
            raise ValidationError(path, f"nested deeper than {max_depth}")
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            return integer(-MAX_SAFE_INT, MAX_SAFE_INT)(value, path)
        if isinstance(value, str):
            if len(value) > max_str:
                raise ValidationError(path, f"longer than {max_str} characters")
            return value
        if isinstance(value, (list, tuple)):
            if len(value) > max_items:
                raise ValidationError(path, f"more than {max_items} items")
            return [walk(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(value)]
        if isinstance(value, Mapping):
            if len(value) > max_items:
                raise ValidationError(path, f"more than {max_items} members")
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise ValidationError(path, "object keys must be strings")
                out[k] = walk(v, f"{path}.{k}", depth + 1)
            return out
        raise ValidationError(path, f"{_type_name(value)} is not allowed (no floats)")

    def check(value: Any, path: str) -> Any:
        return walk(value, path, 0)

    return check


def json_object(**limits: int) -> Validator:
    inner = json_value(**limits)

    def check(value: Any, path: str) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise ValidationError(path, f"expected an object, got {_type_name(value)}")
        checked: dict[str, Any] = inner(value, path)
        return checked

    return check


def record(fields: Mapping[str, Any], build: Callable[..., Any]) -> Validator:
    """Validate an object member by member against ``fields`` and pass them to ``build``."""

    def check(value: Any, path: str) -> Any:
        if not isinstance(value, Mapping):
            raise ValidationError(path or "$", f"expected an object, got {_type_name(value)}")
        prefix = f"{path}." if path else ""
        for key in value:
            if key not in fields:
                raise ValidationError(f"{prefix}{key}", "unknown field", code="unknown_field")
        parsed: dict[str, Any] = {}
        for name, spec in fields.items():
            is_optional = isinstance(spec, tuple) and spec[0] is _OPTIONAL
            validator = spec[1] if is_optional else spec
            if name not in value:
                if is_optional:
                    continue
                raise ValidationError(f"{prefix}{name}", "missing", code="missing_field")
            parsed[name] = validator(value[name], f"{prefix}{name}")
        return build(**parsed)

    return check
