"""The fast canonical-JSON path gives exactly the bytes of the RFC 8785 reference."""

from __future__ import annotations

from typing import Any

import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from aeamc.shared.canonical import MAX_SAFE_INT, canonical_json

_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-MAX_SAFE_INT, MAX_SAFE_INT)
    | st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
)
_keys = st.text(max_size=6) | st.sampled_from(["a", "b", "é", "\U0001f600", "\ufb01", "_", "Z"])
_json = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_keys, inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(_json)
def test_fast_path_matches_rfc8785(obj: Any) -> None:
    assert canonical_json(obj) == rfc8785.dumps(obj)


def test_control_characters_and_escapes_match() -> None:
    obj = {"s": "".join(chr(c) for c in range(0x00, 0x80)) + '\u2028\u2029\x7f\\"/'}
    assert canonical_json(obj) == rfc8785.dumps(obj)
