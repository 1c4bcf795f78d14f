"""Structured logs to stderr: one JSON object per line (default) or one logfmt line.

Every line has ``level``, ``logger`` and ``msg``, the request id of the task or request
being handled (``request_id``, when there is one) and any ``extra=`` context fields.
Under systemd (``$JOURNAL_STREAM`` set) timestamps are left out, since journald adds its
own; elsewhere each line has ``ts``, an ISO-8601 UTC time. ``$AEAMC_LOG_FORMAT=logfmt``
selects ``key=value`` lines instead of JSON.

Request ids: every HTTP request gets one (a well-formed incoming ``X-Request-ID`` is kept,
else one is generated), returned in the ``X-Request-ID`` response header and put on every
line logged while handling it. Work for a task (pushing its assignment, challenging it)
runs under the task's id, ``task_request_id(task_id)``, which is also sent to the agent
as ``X-Request-ID``; the agent logs under it and sends it back with the proof.
"""

from __future__ import annotations

import itertools
import secrets

from aeamc.shared.runtime.logs import (
    REQUEST_ID,
    REQUEST_ID_HEADER,
    JsonFormatter,
    LogfmtFormatter,
    configure,
    well_formed,
)
from aeamc.shared.runtime.logs import derived_task_request_id as task_request_id

__all__ = [
    "REQUEST_ID",
    "REQUEST_ID_HEADER",
    "JsonFormatter",
    "LogfmtFormatter",
    "configure",
    "incoming_request_id",
    "new_request_id",
    "task_request_id",
    "well_formed",
]


#: Request ids correlate log lines; they need to be unique, not secret. A random prefix
#: drawn once per process and a counter make them unique across restarts and processes
#: without a ``getrandom`` system call per request (6 % of the event loop's time at
#: 1,000 heartbeats/s).
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count()


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):08x}"


def incoming_request_id(header: str | None) -> str:
    return header if header is not None and well_formed(header) else new_request_id()
