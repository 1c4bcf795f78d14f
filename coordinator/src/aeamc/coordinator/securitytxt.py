"""``/.well-known/security.txt`` (RFC 9116): whom to tell about a vulnerability in this
deployment, from the operator's ``[security]`` settings.

Without a contact there is no file (404): an empty or invented contact would send a
finder's report nowhere. ``Expires`` is set a configured number of days after the file
is served, so a running coordinator never serves an expired file, and the operator's
details are current whenever the configuration is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_CONTACT = re.compile(r"(mailto:[^@\s]+@[^@\s]+|https://\S+|tel:\+?[0-9-]+)")


@dataclass(frozen=True)
class SecurityConfig:
    """The ``[security]`` section (docs/coordinator.md#security-contact)."""

    #: Where to report a vulnerability: ``mailto:``, ``https://`` or ``tel:`` URIs,
    #: separated by spaces, most preferred first. Empty: no security.txt is served.
    contact: str = ""
    #: The ``https://`` URL of your disclosure policy (optional).
    policy: str = ""
    #: Languages reports may be written in (RFC 5646 tags, comma-separated).
    preferred_languages: str = "en"
    #: ``Expires`` is this many days after the moment the file is served (1..365).
    expires_days: int = 180


def security_checks(c: SecurityConfig) -> list[tuple[bool, str]]:
    """The configuration checks of ``[security]``, as (holds, what must hold)."""
    return [
        (
            all(_CONTACT.fullmatch(uri) for uri in c.contact.split()),
            "security.contact must be mailto:, https:// or tel: URIs separated by spaces",
        ),
        (
            not c.policy or re.fullmatch(r"https://\S+", c.policy) is not None,
            "security.policy must be an https:// URL",
        ),
        (
            re.fullmatch(r"[A-Za-z0-9-]+(, *[A-Za-z0-9-]+)*", c.preferred_languages) is not None,
            "security.preferred_languages must be language tags separated by commas",
        ),
        (1 <= c.expires_days <= 365, "security.expires_days must be 1..365"),
    ]


def render(c: SecurityConfig, now: datetime) -> str | None:
    """The file's text at ``now`` (UTC), or None when no contact is configured."""
    contacts = c.contact.split()
    if not contacts:
        return None
    expires = (now.astimezone(UTC) + timedelta(days=c.expires_days)).replace(microsecond=0)
    lines = [f"Contact: {uri}" for uri in contacts]
    lines.append(f"Expires: {expires.strftime('%Y-%m-%dT%H:%M:%SZ')}")
    if c.policy:
        lines.append(f"Policy: {c.policy}")
    lines.append(f"Preferred-Languages: {c.preferred_languages}")
    return "\n".join(lines) + "\n"
