"""``/.well-known/security.txt`` (RFC 9116) from the operator's ``[security]`` settings:
served over the coordinator's TLS to anyone, never expired, and absent rather than
invented when no contact is configured."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from aeamc.coordinator.config import parse_config
from aeamc.coordinator.securitytxt import SecurityConfig, render
from aeamc.shared.runtime.configfiles import ConfigError
from tests.support.coordinator import running_coordinator

NOW = datetime(2026, 12, 3, 12, 0, 0, 123456, tzinfo=UTC)


def test_the_file_names_every_contact_and_expires_later() -> None:
    config = SecurityConfig(
        contact="mailto:security@lan.example https://lan.example/report",
        policy="https://lan.example/disclosure",
        preferred_languages="en, de",
        expires_days=30,
    )
    assert render(config, NOW) == (
        "Contact: mailto:security@lan.example\n"
        "Contact: https://lan.example/report\n"
        "Expires: 2027-01-02T12:00:00Z\n"
        "Policy: https://lan.example/disclosure\n"
        "Preferred-Languages: en, de\n"
    )
    assert render(SecurityConfig(), NOW) is None  # no contact: no file at all


@pytest.mark.parametrize(
    ("security", "message"),
    [
        ({"contact": "security@lan.example"}, "security.contact"),
        ({"contact": "mailto:a@b http://lan.example/report"}, "security.contact"),
        ({"contact": "mailto:a@b", "policy": "http://lan.example/p"}, "security.policy"),
        ({"contact": "mailto:a@b", "expires_days": 400}, "security.expires_days"),
        ({"contact": "mailto:a@b", "expires_days": 0}, "security.expires_days"),
        ({"contact": "mailto:a@b", "preferred_languages": "en;de"}, "preferred_languages"),
    ],
)
def test_bad_security_settings_are_named(security: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"security": security})


def test_served_to_anyone_over_tls_and_absent_without_a_contact(tmp_path: Path) -> None:
    contact = "mailto:security@lan.example"
    with running_coordinator(tmp_path / "on", {"security": {"contact": contact}}) as coord:
        status, raw = coord.request("GET", "/.well-known/security.txt", device=None)
        assert status == 200 and isinstance(raw, bytes)
        text = raw.decode("utf-8")
        fields = dict(line.split(": ", 1) for line in text.splitlines())
        assert fields["Contact"] == contact and fields["Preferred-Languages"] == "en"
        expires = datetime.strptime(fields["Expires"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        days = (expires - datetime.now(UTC)).total_seconds() / 86400
        assert 179.9 < days <= 180
    with running_coordinator(tmp_path / "off") as coord:
        status, body = coord.request("GET", "/.well-known/security.txt", device=None)
        assert status == 404 and body["error"]["code"] == "not_found"
