"""Where ``aeamc task`` finds the coordinator, its token and whom to trust: the command
line over the environment over the settings file, and nothing sent without a way to
check the coordinator."""

from __future__ import annotations

from pathlib import Path

import pytest

from aeamc.shared.taskclient import SettingsError, load_settings

FP = "ab" * 32


def test_command_line_over_environment_over_file(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text(
        'url = "https://file.lan:8443"\ntoken = "from-file"\n'
        f'ca_fingerprint = "{":".join(FP[i : i + 2] for i in range(0, 64, 2)).upper()}"\n'
    )
    env = {"AEAMC_CLIENT_CONFIG": str(path), "AEAMC_TOKEN": "from-env"}
    s = load_settings({"url": "https://cli.lan:8443/"}, env)
    assert (s.url, s.token, s.ca_fingerprint, s.ca_file) == (
        "https://cli.lan:8443",
        "from-env",
        FP,  # the colon-separated, upper-case form is accepted
        None,
    )
    assert load_settings({}, {"AEAMC_CLIENT_CONFIG": str(path)}).url == "https://file.lan:8443"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({}, "no coordinator URL"),
        ({"AEAMC_URL": "http://c.lan:8443"}, "expected https://"),
        ({"AEAMC_URL": "https://c.lan:8443"}, "no client token"),
        ({"AEAMC_URL": "https://c.lan:8443", "AEAMC_TOKEN": "t"}, "no way to check"),
        (
            {"AEAMC_URL": "https://c.lan", "AEAMC_TOKEN": "t", "AEAMC_CA_FINGERPRINT": "12"},
            "64 hex digits",
        ),
    ],
)
def test_missing_or_wrong_settings_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings({}, {"HOME": "/nonexistent", **env})


def test_a_bad_settings_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "client.toml"
    path.write_text('url = "https://c.lan"\npassword = "x"\n')
    with pytest.raises(SettingsError, match="unknown keys password"):
        load_settings({}, {}, config=str(path))
    with pytest.raises(SettingsError, match="no such configuration file"):
        load_settings({}, {}, config=str(tmp_path / "missing.toml"))
    path.write_text("url = [")
    with pytest.raises(SettingsError, match=r"client\.toml"):
        load_settings({}, {}, config=str(path))
