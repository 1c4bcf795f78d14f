"""Strict JSON: one meaning per body, or a refusal that says why."""

from __future__ import annotations

import subprocess
import sys

import pytest

from aeamc.shared.strictjson import (
    MAX_DEPTH,
    AmbiguousJson,
    JsonError,
    loads_strict,
    nesting_depth,
    too_deep,
)


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


def test_nesting_is_bounded_and_brackets_in_strings_do_not_count() -> None:
    deepest = b"[" * MAX_DEPTH + b"]" * MAX_DEPTH
    assert loads_strict(deepest) is not None
    with pytest.raises(JsonError, match=f"deeper than {MAX_DEPTH}"):
        loads_strict(b"[" + deepest + b"]")
    quoted = b'{"a": "' + b'[\\\\\\"{' * 100 + b'"}'
    assert nesting_depth(quoted) == 1
    assert loads_strict(quoted)["a"].startswith('[\\"{')


def test_many_brackets_side_by_side_are_not_depth() -> None:
    """The count that spares most bodies the scan only decides when it is conclusive."""
    wide = b"[" + b"[[]]," * (4 * MAX_DEPTH) + b"[]]"
    assert not too_deep(wide) and too_deep(wide, limit=2)
    assert len(loads_strict(wide)) == 4 * MAX_DEPTH + 1
    assert too_deep(b"[" * (MAX_DEPTH + 1)) and not too_deep(b"[" * MAX_DEPTH)


def test_a_deep_body_is_refused_whatever_the_recursion_limit() -> None:
    """The parsers recurse once a level in C; with a raised recursion limit (as some
    libraries set) an unbounded body would overflow the stack and kill the process."""
    script = (
        "import sys; sys.setrecursionlimit(10**6)\n"
        "from aeamc.shared.strictjson import JsonError, loads_strict\n"
        "try:\n    loads_strict(b'[' * 200_000)\n"
        "except JsonError as exc:\n    print(exc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (
        0,
        f"not valid JSON: nested deeper than {MAX_DEPTH} levels",
    )
