"""Structured logs shared by both daemons: one JSON object per line (default) or logfmt.

Every line has ``level``, ``logger`` and ``msg``, the request id of the task or request
being handled (``request_id``, when there is one) and any ``extra=`` context fields.
Under systemd (``$JOURNAL_STREAM`` set) timestamps are left out, since journald adds its
own; elsewhere each line has ``ts``, an ISO-8601 UTC time. When the log stream *is* the
journal (``$JOURNAL_STREAM`` names its device and inode, systemd.exec(5)), each line
starts with its syslog priority, ``<3>`` for an error to ``<7>`` for debug (sd-daemon(3)),
so that journald files it at that priority and ``journalctl -p err`` finds the errors.
``$AEAMC_LOG_FORMAT=logfmt`` selects ``key=value`` lines instead of JSON. The daemons' own
``logs`` modules add how they obtain request ids.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import re
import sys
import time
from typing import Any

#: The id of the request or task being handled, on every log line written meanwhile.
REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "aeamc_request_id", default=None
)
REQUEST_ID_HEADER = "X-Request-ID"
_WELL_FORMED = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# Attributes every LogRecord has; anything else came from ``extra=`` and is context.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def well_formed(value: str | None) -> bool:
    return value is not None and _WELL_FORMED.fullmatch(value) is not None


def derived_task_request_id(task_id: str) -> str:
    """The id both daemons derive for a task's log lines when none came with it."""
    # hashlib maps OpenSSL (3-4 MB): imported here, not by the agent's launcher, which logs.
    import hashlib

    return "task-" + hashlib.sha256(task_id.encode()).hexdigest()[:24]


def _stamp(record: logging.LogRecord) -> str:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{stamp}.{int(record.msecs):03d}Z"


def _context(record: logging.LogRecord) -> dict[str, Any]:
    fields = {k: v for k, v in vars(record).items() if k not in _STANDARD}
    rid = REQUEST_ID.get()
    if rid is not None:
        fields.setdefault("request_id", rid)
    return fields


#: Characters that must never reach a log line raw: C0 controls (CR and LF split a line,
#: ESC drives a terminal), DEL, C1 controls (0x9B is a one-byte CSI) and the Unicode line
#: and paragraph separators, which some viewers treat as line breaks.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_one(match: re.Match[str]) -> str:
    c = match.group()
    short = _SHORT_ESCAPES.get(c)
    if short is not None:
        return short
    return f"\\x{ord(c):02x}" if ord(c) <= 0xFF else f"\\u{ord(c):04x}"


def escape_control(text: str) -> str:
    """``text`` with every control character written as a backslash escape (``\\n``,
    ``\\r``, ``\\t``, ``\\xHH``, ``\\uHHHH``), so that text a device or client chose can
    neither break a log line in two nor send a terminal escape sequence. Backslashes are
    doubled first, so the original is recoverable exactly."""
    return _CONTROL.sub(_escape_one, text.replace("\\", "\\\\"))


def _json_escape_one(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _quote(value: str) -> str:
    if value and not _CONTROL.search(value) and not any(c in value for c in ' "=\\'):
        return value
    escaped = escape_control(value).replace('"', '\\"')
    return f'"{escaped}"'


class JsonFormatter(logging.Formatter):
    def __init__(self, *, timestamps: bool) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {}
        if self.timestamps:
            out["ts"] = _stamp(record)
        out["level"] = record.levelname.lower()
        out["logger"] = record.name
        out["msg"] = record.getMessage()
        for key, value in _context(record).items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        # json.dumps escapes C0 controls itself; DEL, C1 and U+2028/2029 it leaves raw.
        return _CONTROL.sub(_json_escape_one, json.dumps(out, default=str, ensure_ascii=False))


class LogfmtFormatter(logging.Formatter):
    def __init__(self, *, timestamps: bool) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.timestamps:
            parts.append(f"ts={_stamp(record)}")
        parts += [
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        parts += [f"{k}={_quote(str(v))}" for k, v in _context(record).items()]
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


#: Syslog priority of each logging level, as journald reads a ``<N>`` line prefix.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}


def writes_to_journal(stream: object, environ: dict[str, str] | None = None) -> bool:
    """Whether ``stream`` is the journald stream systemd connected (``$JOURNAL_STREAM``
    is "device:inode" of it); a file or pipe the output was redirected to is not."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        info = os.fstat(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):
        return False
    return (info.st_dev, info.st_ino) == (device, inode)


class PriorityPrefix(logging.Formatter):
    """Another formatter's line, led by its syslog priority (``<3>`` for an error)."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno)
        if priority is None:  # a custom level: the nearest standard one below it
            priority = _PRIORITY[max((lv for lv in _PRIORITY if lv <= record.levelno), default=10)]
        return f"<{priority}>{self.inner.format(record)}"


def print_error(line: str) -> None:
    """Write a command's fatal error to stderr, at priority ``err`` when that is the
    journal: a service that stops on it (a configuration error, exit 78) is then found by
    ``journalctl -p err`` like every other error."""
    prefix = f"<{_PRIORITY[logging.ERROR]}>" if writes_to_journal(sys.stderr) else ""
    print(prefix + line, file=sys.stderr)


def configure(verbosity: int, stream: object = None, fmt: str | None = None) -> None:
    """INFO by default, DEBUG with ``-v``; third-party chatter stays at WARNING.

    ``fmt`` is ``"json"`` or ``"logfmt"``; by default ``$AEAMC_LOG_FORMAT``, else JSON.
    """
    fmt = fmt or os.environ.get("AEAMC_LOG_FORMAT", "json")
    timestamps = "JOURNAL_STREAM" not in os.environ
    formatter: logging.Formatter = (
        LogfmtFormatter(timestamps=timestamps)
        if fmt == "logfmt"
        else JsonFormatter(timestamps=timestamps)
    )
    stream = stream or sys.stderr
    if writes_to_journal(stream):
        formatter = PriorityPrefix(formatter)
    handler = logging.StreamHandler(stream)  # type: ignore[arg-type]
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity > 0 else logging.INFO)
    for noisy in ("zeroconf", "aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity > 1 else logging.WARNING)
