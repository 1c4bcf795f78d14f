"""Text a client or device chose never reaches a log line raw: no control character can
split a line in two, forge a following line, or drive the terminal of whoever reads it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from aeamc.shared.runtime.logs import escape_control
from tests.support.coordinator import CoordinatorProcess

HOSTILE = 'x\r\nlevel=error msg="forged"\x1b[2J\x00\x85\x9b\x7f\u2028\u2029\\ end'
RAW_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
CONTROL = [*range(0x00, 0xA0), 0x2028, 0x2029]


def _unescape(text: str) -> str:
    return re.sub(
        r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|[nrt\\])",
        lambda m: {"n": "\n", "r": "\r", "t": "\t", "\\": "\\"}.get(m[1]) or chr(int(m[1][1:], 16)),
        text,
    )


def test_every_control_character_is_escaped_and_recoverable() -> None:
    for cp in CONTROL:
        text = f"a{chr(cp)}b"
        out = escape_control(text)
        is_control = cp < 0x20 or 0x7F <= cp <= 0x9F or cp in (0x2028, 0x2029)
        if is_control:
            assert not RAW_CONTROL.search(out) and "\n" not in out, hex(cp)
        else:
            assert out == text.replace("\\", "\\\\"), hex(cp)
        assert _unescape(out) == text, hex(cp)
    assert _unescape(escape_control(HOSTILE)) == HOSTILE


@pytest.mark.parametrize("fmt", ["json", "logfmt"])
def test_hostile_text_in_a_request_stays_on_one_escaped_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    monkeypatch.setenv("AEAMC_LOG_FORMAT", fmt)
    proc = CoordinatorProcess(tmp_path / "coord")
    proc.init()
    proc.start()
    try:
        status, body = proc.request(
            "PUT",
            "/v1/flags/hostile",
            {"percent": 10, "by": HOSTILE[:100]},
            token=proc.token("operator"),
        )
        assert status == 200, body
    finally:
        proc.stop()
    assert proc.log is not None
    text = proc.log.read_text(encoding="utf-8")
    lines = text.split("\n")
    ours = [line for line in lines if "flag hostile set" in line]
    assert len(ours) == 1, lines
    line = ours[0]
    # One line: no raw CR, LF, NUL, ESC, C1, DEL or line separator anywhere in the log.
    assert not RAW_CONTROL.search(text)
    assert "\r" not in text
    assert not any(line_.startswith("level=error") for line_ in lines)
    if fmt == "json":
        assert HOSTILE[:100] in json.loads(line)["msg"]
    else:
        assert escape_control(HOSTILE[:100]).replace('"', '\\"') in line
