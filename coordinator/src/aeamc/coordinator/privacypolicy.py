"""The operator's details in the privacy policy served at ``/privacy``, from ``[privacy]``.

The policy (``docs/privacy-policy.md``) names the operator through placeholders such as
``{{controller}}``. They survive the Markdown rendering untouched (no Markdown rule uses
braces) and are replaced in the rendered HTML with the configured values, HTML-escaped,
so a value is always shown as text. A value that is not configured is never invented:
the page says plainly that the operator has not published it.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, fields

_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")
_MAX_CHARS = 500


@dataclass(frozen=True)
class PrivacyConfig:
    """The ``[privacy]`` section (docs/coordinator.md#privacy-policy)."""

    #: The controller: the person or organisation that runs this coordinator.
    controller: str = ""
    #: How to reach the controller: a postal address and/or an email address.
    controller_contact: str = ""
    #: The data protection officer's contact, where the operator has one.
    dpo_contact: str = ""
    #: The supervisory authority a complaint can go to, and its ``https://`` web page.
    supervisory_authority: str = ""
    supervisory_authority_url: str = ""
    #: Anything else the operator's jurisdiction needs said (one paragraph of text).
    jurisdiction_notes: str = ""
    #: Devices seen over mDNS but never enrolled are deleted after this many days
    #: without a new announcement (1..365).
    candidate_retention_days: int = 7
    #: How long the operator keeps backups of coordinator.db (its own procedure);
    #: 0: not published.
    backup_retention_days: int = 0


def privacy_checks(c: PrivacyConfig) -> list[tuple[bool, str]]:
    """The configuration checks of ``[privacy]``, as (holds, what must hold)."""
    checks = [
        (
            len(value) <= _MAX_CHARS and value.isprintable(),
            f"privacy.{name} must be one line of at most {_MAX_CHARS} printable characters",
        )
        for name, value in _texts(c).items()
    ]
    return [
        *checks,
        (
            not c.supervisory_authority_url
            or re.fullmatch(r"https://\S+", c.supervisory_authority_url) is not None,
            "privacy.supervisory_authority_url must be an https:// URL",
        ),
        (
            not c.supervisory_authority_url or bool(c.supervisory_authority.strip()),
            "privacy.supervisory_authority_url needs privacy.supervisory_authority (its name)",
        ),
        (
            1 <= c.candidate_retention_days <= 365,
            "privacy.candidate_retention_days must be 1..365",
        ),
        (
            0 <= c.backup_retention_days <= 3650,
            "privacy.backup_retention_days must be 0..3650 (0: not published)",
        ),
    ]


def _texts(c: PrivacyConfig) -> dict[str, str]:
    """Every text setting by name (the day counts are checked on their own)."""
    return {f.name: v for f in fields(c) if isinstance(v := getattr(c, f.name), str)}


def values(c: PrivacyConfig) -> dict[str, str]:
    """Each placeholder's text (not yet escaped): the configured value, or a plain
    statement that the operator has not published it."""
    authority = c.supervisory_authority.strip()
    if authority and c.supervisory_authority_url:
        authority = f"{authority} ({c.supervisory_authority_url})"
    backups = c.backup_retention_days
    return {
        "controller": c.controller.strip() or "the operator has not published its name here",
        "controller_contact": c.controller_contact.strip()
        or "the operator has not published a contact address here",
        "dpo_contact": c.dpo_contact.strip()
        or "the operator has not published a data protection officer",
        "supervisory_authority": authority
        or "the operator has not published a supervisory authority",
        "jurisdiction_notes": c.jurisdiction_notes.strip()
        or "The operator has not published further notes for its jurisdiction.",
        "candidate_retention_days": str(c.candidate_retention_days),
        "backup_retention_days": f"at most {backups} days"
        if backups
        else "the operator has not published this",
    }


def fill(rendered: str, c: PrivacyConfig) -> str:
    """``rendered`` (the policy as HTML) with every placeholder replaced by its value,
    HTML-escaped; an unknown placeholder is a ValueError (a typo in the policy)."""
    known = values(c)

    def one(m: re.Match[str]) -> str:
        if m.group(1) not in known:
            raise ValueError(f"the privacy policy names an unknown placeholder {m.group(0)}")
        return html.escape(known[m.group(1)], quote=True)

    return _PLACEHOLDER.sub(one, rendered)
