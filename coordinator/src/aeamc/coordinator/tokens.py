"""Tokens: created with their limits, checked and spent per use (only hashes are stored)."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any

from aeamc.shared.refusals import Fault, Refusal

from .context import Context
from .dbtx import Tx
from .store import tokens as token_rows

ROLES = ("operator", "client", "enroll")
#: Longest lifetime a token may be given: a century, in seconds.
MAX_TOKEN_TTL_S = 100 * 365 * 86_400


#: A token's owner id: this many random bytes, in hex. A task id a client chose is stored
#: as ``<owner>.<chosen>``, so a chosen id may take what is left of the 64 a task id has.
OWNER_BYTES = 4


def hash_token(token: str) -> str:
    # surrogatepass: a header's non-UTF-8 bytes or a JSON lone surrogate hash (to nothing
    # known) instead of raising.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class TokenInfo:
    """A token as checked: its role, label, limits and owner (never its hash)."""

    role: str
    label: str
    expires_at: int | None
    uses_left: int | None
    #: The token's owner id: what its tasks belong to (a label is not unique, this is).
    owner: str = ""
    #: The token itself: only in the answer of ``create_token`` (never stored).
    token: str = dataclasses.field(default="", repr=False)


class TokenService:
    """Operator, client and enrollment tokens (stored through ``store/tokens.py``)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def create_token(
        self, role: str, *, label: str = "", ttl_s: int | None = None, uses: int | None = None
    ) -> TokenInfo:
        """Create a token of ``role``; only its hash is stored, the token is in the answer.

        An enrollment token is always limited and expiring: without ``uses`` or ``ttl_s``
        it gets ``tokens.enroll_default_uses`` and ``tokens.enroll_default_ttl_s``, so a
        token handed out carelessly admits a bounded number of devices for a bounded time.
        """
        if role not in ROLES:
            raise Refusal(
                Fault.INVALID, "invalid_message", f"role must be one of {', '.join(ROLES)}"
            )
        if role == "enroll":
            uses = uses if uses is not None else self.ctx.config.tokens.enroll_default_uses
            ttl_s = ttl_s if ttl_s is not None else self.ctx.config.tokens.enroll_default_ttl_s
        token = secrets.token_urlsafe(32)
        now = self.ctx.clock()
        row: dict[str, Any] = {
            "token_hash": hash_token(token),
            "role": role,
            "label": label,
            "created_at": now,
            "expires_at": now + ttl_s * 1000 if ttl_s else None,
            "uses_left": uses,
        }

        def txn(db: Tx) -> str:
            # A fresh owner id, unique among all tokens ever made (they are never deleted),
            # so no token can come to own another's tasks.
            while True:
                owner = secrets.token_hex(OWNER_BYTES)
                if token_rows.owner_taken(db, owner):
                    continue
                token_rows.insert_token(db, {**row, "owner": owner})
                return owner

        owner = await self.ctx.db.write(txn)
        return TokenInfo(role, label, row["expires_at"], uses, owner, token)

    async def check_token(self, token: str | None, roles: tuple[str, ...]) -> TokenInfo:
        """Find a valid token of one of ``roles``, and count this request as one of its uses.

        Only a token's hash is ever stored. A token with a use limit loses one use per
        authenticated request, in one conditional UPDATE in the writer, so concurrent
        requests can never spend more uses than it has; a token without a limit (NULL)
        is only read, and costs no durable commit.
        """
        if not token:
            raise Refusal(Fault.UNAUTHENTICATED, "unauthorized", "a bearer token is required")
        wanted = hash_token(token)
        row = await self.ctx.db.read(lambda db: token_rows.token_row(db, wanted))
        # compare_digest: the lookup found the row by hash, this guards the equality itself.
        if row is None or not hmac.compare_digest(row["token_hash"], wanted):
            raise Refusal(Fault.UNAUTHENTICATED, "unauthorized", "unknown token")
        info = TokenInfo(
            row["role"], row["label"], row["expires_at"], row["uses_left"], row["owner"]
        )
        if info.role not in roles:
            raise Refusal(Fault.FORBIDDEN, "forbidden", f"a {info.role} token cannot do this")
        now = self.ctx.clock()
        if info.expires_at is not None and info.expires_at < now:
            raise Refusal(Fault.UNAUTHENTICATED, "unauthorized", "token expired")
        if info.uses_left is None:
            return info
        left = await self.ctx.db.write(lambda db: token_rows.spend_use(db, wanted, now))
        if left is None:
            raise Refusal(Fault.UNAUTHENTICATED, "unauthorized", "token used up")
        return dataclasses.replace(info, uses_left=left)

    @staticmethod
    def consume_enroll_token(db: Tx, token: str, now: int) -> None:
        """Spend one use of a valid enrollment token in the caller's transaction, or refuse
        it (unknown, expired, used up) so the enrollment changes nothing."""
        row = token_rows.enroll_token_row(db, hash_token(token))
        if row is None:
            raise Refusal(Fault.FORBIDDEN, "invalid_token", "unknown enrollment token")
        if row["expires_at"] is not None and row["expires_at"] < now:
            raise Refusal(Fault.FORBIDDEN, "invalid_token", "enrollment token expired")
        if row["uses_left"] is not None:
            if row["uses_left"] <= 0:
                raise Refusal(Fault.FORBIDDEN, "invalid_token", "enrollment token used up")
            token_rows.spend_enroll_use(db, row["token_hash"])
