"""The privacy policy served at ``/privacy`` names the operator from ``[privacy]``: values
are shown as text whatever they contain, an unset value is said to be unpublished rather
than invented, and the policy states what the software really does (TLS in transit)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from aeamc.coordinator.config import parse_config
from aeamc.coordinator.dashboard.web import policy_source, privacy_page
from aeamc.coordinator.privacypolicy import PrivacyConfig, fill
from aeamc.shared.runtime.configfiles import ConfigError
from tests.support.coordinator import running_coordinator

HOSTILE = 'Evil <script>alert("x")</script> & Co'
OPERATOR = {
    "controller": HOSTILE,
    "controller_contact": "privacy@lan.example, 1 Main St, Springfield",
    "supervisory_authority": "The Data Protection Authority",
    "supervisory_authority_url": "https://dpa.example/complaints",
    "candidate_retention_days": 5,
    "backup_retention_days": 14,
}


def text_of(page: str) -> str:
    """The page's visible text, roughly: tags dropped, whitespace collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", page).split())


def assert_operator_shown(page: str) -> None:
    assert "<script>" not in page and "<script" not in page
    assert "Evil &lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Co" in page
    assert "privacy@lan.example, 1 Main St, Springfield" in page
    assert "The Data Protection Authority (https://dpa.example/complaints)" in page
    text = text_of(page)
    assert "at most 5 days after its latest announcement" in text
    assert "How long those backups are kept: at most 14 days" in text
    assert "the operator has not published a data protection officer" in text
    assert "{{" not in page


def test_the_operator_is_filled_in_as_text() -> None:
    page = privacy_page(PrivacyConfig(**OPERATOR)).decode()
    assert_operator_shown(page)


def test_unset_details_are_said_to_be_unpublished() -> None:
    text = text_of(privacy_page(PrivacyConfig()).decode())
    for said in (
        "Controller: the operator has not published its name here",
        "Contact: the operator has not published a contact address here",
        "Data protection officer: the operator has not published a data protection officer",
        "Supervisory authority: the operator has not published a supervisory authority",
        "How long those backups are kept: the operator has not published this",
    ):
        assert said in text
    assert "{{" not in text


def test_an_unknown_placeholder_is_an_error() -> None:
    with pytest.raises(ValueError, match="controler"):
        fill("<p>{{controler}}</p>", PrivacyConfig())


def test_the_policy_states_tls_in_transit_and_no_longer_denies_it() -> None:
    source = " ".join(policy_source().split())
    assert "does not encrypt" not in source
    assert "TLS 1.3 only" in source and "mutual TLS" in source


def test_the_policy_covers_what_a_notice_must() -> None:
    text = " ".join(policy_source().split())
    for section in (
        "## Who is responsible",
        "## Purposes and legal basis",
        "## How long it is kept",
        "## Backups",
        "## Do you have to provide the data?",
        "## Automated decisions",
        "## International transfers",
        "## Your rights",
        "## Notice for California residents (CCPA)",
    ):
        assert section in policy_source(), section
    for fact in (
        "Art. 6(1)(b)",
        "Art. 6(1)(f)",
        "rectification",
        "restriction",
        "objection",
        "portability",
        "complain to a supervisory authority",
        "not sold and not shared",
        "does not discriminate",
        "contact the operator",
    ):
        assert fact in text, fact


@pytest.mark.parametrize(
    ("privacy", "message"),
    [
        ({"controller": "two\nlines"}, "privacy.controller must be one line"),
        ({"controller_contact": "x" * 501}, "privacy.controller_contact must be one line"),
        ({"supervisory_authority_url": "http://dpa.example"}, "must be an https:// URL"),
        ({"supervisory_authority_url": "https://dpa.example"}, "needs privacy.supervisory_auth"),
        ({"candidate_retention_days": 0}, "privacy.candidate_retention_days must be 1..365"),
        ({"backup_retention_days": -1}, "privacy.backup_retention_days must be 0..3650"),
        ({"controller": 5}, "privacy.controller: expected str"),
        ({"controler": "typo"}, "privacy.controler: unknown setting"),
    ],
)
def test_bad_privacy_settings_are_named(privacy: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({"privacy": privacy})


def test_served_with_the_configured_operator(tmp_path: Path) -> None:
    with running_coordinator(tmp_path / "c", {"privacy": OPERATOR}) as coord:
        status, raw = coord.request("GET", "/privacy", device=None)
        assert status == 200 and isinstance(raw, bytes)
        assert_operator_shown(raw.decode("utf-8"))
