"""Configuration: documented defaults, strict keys, clear errors."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from aeamc.agent.config import (
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    ConfigError,
    config_from_mapping,
    config_path,
    load_config,
    render_config,
)


def test_defaults_are_the_documented_ones() -> None:
    c = AgentConfig()
    assert c.state_dir == Path("/var/lib/aeamc-agent")
    assert c.coordinator_url is None and c.enrollment_token is None
    assert (c.listen_host, c.listen_port, c.advertise_address) == ("0.0.0.0", 0, None)
    assert (c.heartbeat_interval_s, c.heartbeat_jitter) == (30.0, 0.1)
    e = c.energy
    assert (e.min_battery_pct, e.resume_battery_pct, e.max_temp_c, e.resume_temp_c) == (
        20,
        25,
        75,
        70,
    )
    assert e.run_only_when_charging is False
    assert c.telemetry_source == "psutil" and c.telemetry_profile is None
    assert (c.outbox_max_count, c.outbox_max_bytes) == (1000, 256 * 1024 * 1024)
    assert c.trace_retention_s == 24 * 3600
    assert c.mdns_enabled and c.mdns_interfaces == ()
    assert c.cheat_fraction == 0 and not c.is_demo_cheater


def test_every_key_read_from_toml(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text('{"steps": [{}]}')
    text = """
state_dir = "state"
coordinator_url = "https://192.0.2.1:8480"
enrollment_token = "abc.DEF-1"
[listen]
host = "127.0.0.1"
port = 7481
advertise_address = "192.0.2.2"
[heartbeat]
interval_s = 10
jitter = 0.2
enroll_retry_s = 30
[energy]
min_battery_pct = 30
resume_battery_pct = 40
max_temp_c = 80
resume_temp_c = 72
run_only_when_charging = true
[telemetry]
source = "simulated"
profile = "p.json"
interval_s = 2.5
[outbox]
max_count = 10
max_bytes = 4096
[traces]
retention_h = 2
[network]
request_timeout_s = 3
retry_initial_s = 0.5
retry_max_s = 60
shutdown_grace_s = 1
[mdns]
enabled = false
interfaces = ["127.0.0.1"]
[demo]
cheat_fraction = 0.25
"""
    path = tmp_path / "agent.toml"
    path.write_text(text)
    c = load_config(path)
    assert c.state_dir == tmp_path / "state"  # relative to the config file
    assert c.telemetry_profile == tmp_path / "p.json"
    assert c.listen_port == 7481 and c.advertise_address == "192.0.2.2"
    assert c.heartbeat_interval_s == 10.0 and c.enroll_retry_s == 30.0
    assert c.energy.run_only_when_charging and c.energy.resume_temp_c == 72
    assert c.trace_retention_s == 7200.0
    assert c.mdns_interfaces == ("127.0.0.1",) and not c.mdns_enabled
    assert c.is_demo_cheater and c.cheat_fraction == 0.25
    assert c.source_path == path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("statedir = '/x'", "unknown key statedir"),
        ("[energy]\nmin_batery_pct = 3", "unknown key energy.min_batery_pct"),
        ("[listen]\nport = '80'", "listen.port: expected an integer"),
        ("[listen]\nport = 70000", "listen.port"),
        ("[listen]\nhost = 'localhost'", "not an IP address"),
        ("[listen]\nadvertise_address = '0.0.0.0'", "advertise_address"),
        ("coordinator_url = 'ftp://x'", "coordinator_url"),
        ("coordinator_url = 'https://x:1/api'", "base URL only"),
        ("coordinator_url = 'http://x:1'", "TLS 1.3 only; use https://"),
        ("coordinator_ca_fingerprint = 'abc'", "coordinator_ca_fingerprint"),
        ("enrollment_token = 'has space'", "enrollment_token"),
        ("[heartbeat]\ninterval_s = 0", "heartbeat.interval_s: must be positive"),
        ("[heartbeat]\ninterval_s = true", "expected a number"),
        ("[heartbeat]\njitter = 1.5", "heartbeat.jitter"),
        ("[energy]\nmin_battery_pct = 30\nresume_battery_pct = 25", "resume_battery_pct"),
        ("[energy]\nrun_only_when_charging = 'yes'", "expected true or false"),
        ("[telemetry]\nsource = 'magic'", "telemetry.source"),
        ("[telemetry]\nsource = 'simulated'", "telemetry.profile: required"),
        ("[telemetry]\nprofile = 'p.json'", "only used with"),
        ("[telemetry]\nprofile = 3", "expected a path"),
        ("[outbox]\nmax_count = 0", "outbox.max_count"),
        ("[outbox]\nmax_bytes = 10", "outbox.max_bytes"),
        ("[network]\nretry_initial_s = 5\nretry_max_s = 1", "retry_max_s"),
        ("[network]\nshutdown_grace_s = -1", "shutdown_grace_s"),
        ("[mdns]\ninterfaces = '127.0.0.1'", "list of strings"),
        ("[mdns]\ninterfaces = ['::1']", "not IPv4"),
        ("[demo]\ncheat_fraction = 0.5", "only allowed together with"),
        ("[demo]\ncheat_fraction = 2", "between 0 and 1"),
        ("[traces]\nretention_h = 0", "traces.retention_h"),
        ("coordinator_url = 5", "expected a string"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert str(path) in str(err.value)


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[unclosed")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a directory


def test_config_path_precedence() -> None:
    assert config_path("/a.toml", {"AEAMC_AGENT_CONFIG": "/b.toml"}) == Path("/a.toml")
    assert config_path(None, {"AEAMC_AGENT_CONFIG": "/b.toml"}) == Path("/b.toml")
    assert config_path(None, {}) == DEFAULT_CONFIG_PATH


def test_rendered_starter_config_is_valid() -> None:
    text = render_config(state_dir=Path("/srv/a"), coordinator_url="https://10.0.0.1:1", token="t")
    c = config_from_mapping(tomllib.loads(text))
    assert (c.state_dir, c.coordinator_url, c.enrollment_token) == (
        Path("/srv/a"),
        "https://10.0.0.1:1",
        "t",
    )
    assert (
        config_from_mapping(tomllib.loads(render_config(state_dir=Path("/x")))).coordinator_url
        is None
    )
