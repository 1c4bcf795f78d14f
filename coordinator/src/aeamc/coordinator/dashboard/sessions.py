"""Operator login sessions of the dashboard, held in memory only.

A session maps a random id (the only thing the browser gets, in an HttpOnly cookie) to
the operator token that was presented at login. The token stays in this process: the
page's JavaScript never sees it, and every API call made with the cookie is checked
against the token store again, so revoking or expiring the token ends the session too.
Nothing is persisted: a restart logs every operator out, which is the safe failure.

Only SHA-256 hashes of session ids are used as keys, so a dump of this map does not
contain a usable cookie.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

#: A login lasts 12 hours, then the operator presents the token again.
SESSION_LIFETIME_MS = 12 * 3600 * 1000
#: More live sessions than this evicts the oldest: a bound on memory, not a policy.
MAX_SESSIONS = 256


@dataclass(frozen=True)
class Session:
    #: The operator token presented at login (injected as ``Authorization`` server-side).
    token: str
    #: Sent back by the page in ``X-AEAMC-CSRF`` on every state-changing request.
    csrf_token: str
    created_ms: int
    expires_ms: int

    def csrf_matches(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(
            presented.encode("utf-8", "surrogatepass"), self.csrf_token.encode()
        )


def _key(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8", "surrogatepass")).hexdigest()


class SessionStore:
    """Live sessions by hashed id; ``clock`` returns milliseconds (tests pass their own)."""

    def __init__(
        self,
        clock: Callable[[], int],
        *,
        lifetime_ms: int = SESSION_LIFETIME_MS,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.clock = clock
        self.lifetime_ms = lifetime_ms
        self.max_sessions = max_sessions
        self._sessions: dict[str, Session] = {}

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, token: str) -> tuple[str, Session]:
        """A new session for a token already checked to be an operator's."""
        self._expire()
        while len(self._sessions) >= self.max_sessions:
            oldest = min(self._sessions, key=lambda k: self._sessions[k].created_ms)
            del self._sessions[oldest]
        now = self.clock()
        session_id = secrets.token_urlsafe(32)
        session = Session(
            token=token,
            csrf_token=secrets.token_urlsafe(32),
            created_ms=now,
            expires_ms=now + self.lifetime_ms,
        )
        self._sessions[_key(session_id)] = session
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of this id, or ``None`` (unknown, malformed or expired)."""
        if not session_id or len(session_id) > 128:
            return None
        key = _key(session_id)
        session = self._sessions.get(key)
        if session is None:
            return None
        if session.expires_ms <= self.clock():
            del self._sessions[key]
            return None
        return session

    def drop(self, session_id: str | None) -> None:
        if session_id:
            self._sessions.pop(_key(session_id), None)

    def _expire(self) -> None:
        now = self.clock()
        for key in [k for k, s in self._sessions.items() if s.expires_ms <= now]:
            del self._sessions[key]
