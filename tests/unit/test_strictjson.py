"""Strict JSON: one meaning per body, or a refusal that says why."""

from __future__ import annotations

import pytest

from aeamc.shared.strictjson import AmbiguousJson, JsonError, loads_strict


def test_plain_json_parses_as_usual() -> None:
    assert loads_strict(b'{"a": [1, 2.5, "x", null, true], "b": {"c": {}}}') == {
        "a": [1, 2.5, "x", None, True],
        "b": {"c": {}},
    }
    assert loads_strict('{"a": 1}') == {"a": 1}


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'{"a": 1, "a": 1}', "'a' appears twice"),
        (b'{"x": {"b": 1, "b": 2}}', "'b' appears twice"),
        (b'[{"c": 1, "c": 2}]', "'c' appears twice"),
        (b'{"a": NaN}', "NaN is not a JSON number"),
        (b"[Infinity]", "Infinity is not a JSON number"),
        (b"-Infinity", "-Infinity is not a JSON number"),
    ],
)
def test_what_a_lax_parser_would_take_is_ambiguous(raw: bytes, says: str) -> None:
    with pytest.raises(AmbiguousJson, match=says) as caught:
        loads_strict(raw)
    assert caught.value.code == "invalid_json"


@pytest.mark.parametrize(
    "raw", [b"", b"not json", b'{"a": 1', b'"\xff"', "[1]".encode("utf-16"), b"[" * 100_000]
)
def test_what_is_not_json_at_all_is_refused(raw: bytes) -> None:
    with pytest.raises(JsonError) as caught:
        loads_strict(raw)
    assert not isinstance(caught.value, AmbiguousJson)
    assert caught.value.code == "invalid_json" and caught.value.message.startswith("not valid")
