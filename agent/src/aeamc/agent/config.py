"""The agent's configuration: one frozen dataclass of settings with documented defaults.

Read from TOML (``/etc/aeamc/agent.toml`` unless ``--config`` or ``AEAMC_AGENT_CONFIG``
say otherwise). Every key is optional; an unknown key, a wrong type or an inconsistent
combination is a ``ConfigError`` naming the key, so a typo never silently falls back to
a default. docs/agent.md is the reference for every key.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aeamc.shared.labels import CLIENT_PATTERN, MAX_CLIENTS, MAX_TAGS, TAG_PATTERN
from aeamc.shared.runtime.configfiles import ConfigError, read_config_files
from aeamc.shared.runtime.pkcs11 import Pkcs11Error, Pkcs11Uri, is_pkcs11_uri
from aeamc.shared.wasmabi import MAX_FUEL, MAX_MEMORY_MB, MAX_MODULE_BYTES

from .energy import EnergyThresholds

DEFAULT_CONFIG_PATH = Path("/etc/aeamc/agent.toml")
CONFIG_ENV = "AEAMC_AGENT_CONFIG"
DEFAULT_STATE_DIR = Path("/var/lib/aeamc-agent")
TELEMETRY_SOURCES = ("psutil", "simulated")
#: Upper bound of ``max_queued_tasks`` (each queued assignment is a file and a promise).
MAX_QUEUED_TASKS = 1000
_TOKEN = re.compile(r"[A-Za-z0-9._~-]{1,128}")


@dataclass(frozen=True)
class AgentConfig:
    """Every setting of the agent; the TOML key of each field is in ``TOML_KEYS``."""

    #: Identity key, heartbeat counter, pinned coordinator key, outbox, traces, status.
    state_dir: Path = DEFAULT_STATE_DIR
    #: Device identity: a key file path or a ``pkcs11:`` URI (docs/security-keys.md);
    #: unset = ``state_dir/identity.key``.
    identity_key: str | None = None
    #: Fixed coordinator base URL, or the URLs of several nodes of one coordinator
    #: separated by commas (tried in turn when one is unreachable or answers 5xx); unset: find it
    #: over mDNS.
    coordinator_url: str | None = None
    #: Enrollment token from the coordinator's operator; without it enrollment is pending.
    enrollment_token: str | None = None
    #: SHA-256 of the coordinator's CA certificate, as its operator reads it from
    #: ``aeamc-coordinator status``; set, the first enrollment pins only that CA.
    coordinator_ca_fingerprint: str | None = None

    #: Address the assignment/challenge server binds; port 0 picks a free port.
    listen_host: str = "0.0.0.0"  # noqa: S104 - the coordinator must reach the device
    listen_port: int = 0
    #: Address put in the enrollment endpoint and the mDNS advert; unset = detected.
    advertise_address: str | None = None
    #: Seconds from accepting a connection to its first complete request head (TLS
    #: handshake included), and that an idle kept-alive connection stays open.
    listen_header_timeout_s: float = 10.0
    listen_keepalive_timeout_s: float = 75.0
    #: Open connections one source address may hold (the coordinator needs a few).
    listen_max_connections_per_address: int = 16

    heartbeat_interval_s: float = 30.0
    #: Each wait is ``interval × (1 ± jitter)`` so a fleet does not beat in lockstep.
    heartbeat_jitter: float = 0.1
    #: While pending approval, enrollment is re-sent this often.
    enroll_retry_s: float = 60.0

    min_battery_pct: int = 20
    resume_battery_pct: int = 25
    max_temp_c: int = 75
    resume_temp_c: int = 70
    run_only_when_charging: bool = False

    telemetry_source: str = "psutil"
    telemetry_profile: Path | None = None
    #: How often telemetry is read to re-evaluate the energy policy.
    telemetry_interval_s: float = 5.0

    #: Accepted assignments held at once, the running one included; more → ``busy``.
    max_queued_tasks: int = 4
    #: Placement tags this device carries (``[work] tags``): a task may require them.
    tags: tuple[str, ...] = ()
    #: Owner ids of the only clients whose work this device takes (``[work] clients``);
    #: empty = every client's. Others' tasks are refused with ``outside_policy``.
    accept_clients: tuple[str, ...] = ()

    outbox_max_count: int = 1000
    outbox_max_bytes: int = 256 * 1024 * 1024
    trace_retention_s: float = 24 * 3600.0

    request_timeout_s: float = 10.0
    retry_initial_s: float = 1.0
    retry_max_s: float = 300.0
    #: On shutdown the running chunk may finish for this long, then it is abandoned.
    shutdown_grace_s: float = 10.0

    mdns_enabled: bool = True
    #: IPv4 addresses of the interfaces mDNS uses; empty = every IPv4 interface.
    mdns_interfaces: tuple[str, ...] = ()

    #: Fleet updates (docs/updates.md): ``aeamc-agent run`` supervises the release it
    #: runs, checks for new ones this often, and rolls back one not healthy in time.
    updates_enabled: bool = True
    update_check_interval_s: float = 3600.0
    update_health_deadline_s: float = 300.0
    #: The TUF root to trust; unset: the coordinator's first root, pinned on first use.
    update_root: Path | None = None

    #: Clients' WebAssembly kernels (docs/workloads.md): whether this device runs them,
    #: and the most one chunk may ask for; a task asking for more is refused with the
    #: reason ``outside_policy``. The sandbox gives kernels no access to the device.
    wasm_enabled: bool = True
    wasm_max_memory_mb: int = 256
    wasm_max_fuel: int = 100_000_000_000
    #: Largest module this device fetches and runs.
    wasm_max_module_bytes: int = MAX_MODULE_BYTES
    #: Fetched modules and inputs kept on disk (oldest unused dropped beyond it).
    wasm_cache_max_bytes: int = 256 * 1024 * 1024

    #: DEMO ONLY: fraction of chunk outputs faked instead of computed (needs simulated telemetry).
    cheat_fraction: float = 0.0

    source_path: Path | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def energy(self) -> EnergyThresholds:
        return EnergyThresholds(
            min_battery_pct=self.min_battery_pct,
            resume_battery_pct=self.resume_battery_pct,
            max_temp_c=self.max_temp_c,
            resume_temp_c=self.resume_temp_c,
            run_only_when_charging=self.run_only_when_charging,
        )

    @property
    def is_demo_cheater(self) -> bool:
        return self.cheat_fraction > 0


#: TOML (section, key) → field. Top-level keys have section ``""``.
TOML_KEYS: dict[tuple[str, str], str] = {
    ("", "state_dir"): "state_dir",
    ("", "identity_key"): "identity_key",
    ("", "coordinator_url"): "coordinator_url",
    ("", "enrollment_token"): "enrollment_token",
    ("", "coordinator_ca_fingerprint"): "coordinator_ca_fingerprint",
    ("", "max_queued_tasks"): "max_queued_tasks",
    ("listen", "host"): "listen_host",
    ("listen", "port"): "listen_port",
    ("listen", "advertise_address"): "advertise_address",
    ("listen", "header_timeout_s"): "listen_header_timeout_s",
    ("listen", "keepalive_timeout_s"): "listen_keepalive_timeout_s",
    ("listen", "max_connections_per_address"): "listen_max_connections_per_address",
    ("heartbeat", "interval_s"): "heartbeat_interval_s",
    ("heartbeat", "jitter"): "heartbeat_jitter",
    ("heartbeat", "enroll_retry_s"): "enroll_retry_s",
    ("energy", "min_battery_pct"): "min_battery_pct",
    ("energy", "resume_battery_pct"): "resume_battery_pct",
    ("energy", "max_temp_c"): "max_temp_c",
    ("energy", "resume_temp_c"): "resume_temp_c",
    ("energy", "run_only_when_charging"): "run_only_when_charging",
    ("telemetry", "source"): "telemetry_source",
    ("telemetry", "profile"): "telemetry_profile",
    ("telemetry", "interval_s"): "telemetry_interval_s",
    ("outbox", "max_count"): "outbox_max_count",
    ("outbox", "max_bytes"): "outbox_max_bytes",
    ("traces", "retention_h"): "trace_retention_s",
    ("network", "request_timeout_s"): "request_timeout_s",
    ("network", "retry_initial_s"): "retry_initial_s",
    ("network", "retry_max_s"): "retry_max_s",
    ("network", "shutdown_grace_s"): "shutdown_grace_s",
    ("mdns", "enabled"): "mdns_enabled",
    ("mdns", "interfaces"): "mdns_interfaces",
    ("demo", "cheat_fraction"): "cheat_fraction",
    ("updates", "enabled"): "updates_enabled",
    ("updates", "check_interval_s"): "update_check_interval_s",
    ("updates", "health_deadline_s"): "update_health_deadline_s",
    ("updates", "root"): "update_root",
    ("wasm", "enabled"): "wasm_enabled",
    ("wasm", "max_memory_mb"): "wasm_max_memory_mb",
    ("wasm", "max_fuel"): "wasm_max_fuel",
    ("wasm", "cache_max_bytes"): "wasm_cache_max_bytes",
    ("wasm", "max_module_bytes"): "wasm_max_module_bytes",
    ("work", "tags"): "tags",
    ("work", "clients"): "accept_clients",
}
_SECTIONS = {section for section, _ in TOML_KEYS if section}
_FIELD_TYPES = {f.name: f.type for f in fields(AgentConfig)}


def config_path(cli_value: str | None, env: Mapping[str, str] = os.environ) -> Path:
    """``--config`` wins, then ``AEAMC_AGENT_CONFIG``, then the packaged default."""
    if cli_value:
        return Path(cli_value)
    if env.get(CONFIG_ENV):
        return Path(env[CONFIG_ENV])
    return DEFAULT_CONFIG_PATH


def load_config(path: Path) -> AgentConfig:
    try:
        data = read_config_files(path)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file (run `aeamc-agent init` first)") from None
    return config_from_mapping(data, source=path)


def config_from_mapping(data: Mapping[str, Any], *, source: Path | None = None) -> AgentConfig:
    """Build the config from parsed TOML; relative paths are relative to the file."""
    where = f"{source}: " if source else ""
    values: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and key in _SECTIONS:
            for sub, subvalue in value.items():
                name = TOML_KEYS.get((key, sub))
                if name is None:
                    raise ConfigError(f"{where}unknown key {key}.{sub}")
                values[name] = _convert(name, f"{key}.{sub}", subvalue, source, where)
        else:
            name = TOML_KEYS.get(("", key))
            if name is None:
                raise ConfigError(f"{where}unknown key {key}")
            values[name] = _convert(name, key, value, source, where)
    try:
        return AgentConfig(**values, source_path=source)
    except ConfigError as exc:
        raise ConfigError(f"{where}{exc}") from None


def render_config(
    *, state_dir: Path, coordinator_url: str | None = None, token: str | None = None
) -> str:
    """A commented starter config, as ``aeamc-agent init`` writes it."""
    lines = [
        "# aeamc-agent configuration; every key and its default: docs/agent.md",
        f'state_dir = "{_toml_str(str(state_dir))}"',
    ]
    lines.append(
        f'coordinator_url = "{_toml_str(coordinator_url)}"'
        if coordinator_url
        else '# coordinator_url = "https://192.0.2.1:8443"   # unset: found over mDNS'
    )
    lines.append(
        '# coordinator_ca_fingerprint = "..."   # from `aeamc-coordinator status`; '
        "unset: trust on first use"
    )
    lines.append(
        f'enrollment_token = "{_toml_str(token)}"'
        if token
        else '# enrollment_token = "..."   # unset: enrollment waits for the operator'
    )
    lines += [
        "max_queued_tasks = 4   # accepted tasks held at once, the running one included",
        "",
        "[listen]",
        'host = "0.0.0.0"',
        "port = 0   # 0 picks a free port; set one if a firewall is in the way",
        "",
        "[energy]",
        "min_battery_pct = 20",
        "resume_battery_pct = 25",
        "max_temp_c = 75",
        "resume_temp_c = 70",
        "run_only_when_charging = false",
        "",
    ]
    return "\n".join(lines)


# --- helpers ------------------------------------------------------------------------------


def _toml_str(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _convert(name: str, key: str, value: Any, source: Path | None, where: str) -> Any:
    kind = _FIELD_TYPES[name]
    if name == "trace_retention_s":
        return _number(key, value, where) * 3600.0
    if name == "identity_key":
        return _key_location(key, value, source, where)
    if kind in ("Path", "Path | None"):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}{key}: expected a path string")
        path = Path(value).expanduser()
        if not path.is_absolute() and source is not None:
            path = source.parent / path
        return path
    if kind == "float":
        return _number(key, value, where)
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}{key}: expected an integer")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}{key}: expected true or false")
        return value
    if kind in ("str | None", "str"):
        if not isinstance(value, str):
            raise ConfigError(f"{where}{key}: expected a string")
        return value
    if kind == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}{key}: expected a list of strings")
        return tuple(value)
    raise AssertionError(f"no converter for {name}: {kind}")  # pragma: no cover


def _key_location(key: str, value: Any, source: Path | None, where: str) -> str:
    """A ``pkcs11:`` URI (checked now, so a typo fails at load) or an absolute path."""
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}{key}: expected a path or a pkcs11: URI")
    if is_pkcs11_uri(value):
        try:
            Pkcs11Uri.parse(value)
        except Pkcs11Error as exc:
            raise ConfigError(f"{where}{key}: {exc}") from None
        return value
    path = Path(value).expanduser()
    if not path.is_absolute() and source is not None:
        path = source.parent / path
    return str(path)


def _number(key: str, value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{where}{key}: expected a number")
    return float(value)


def coordinator_urls(value: str | None) -> list[str]:
    """The base URLs in ``coordinator_url``: one, or several separated by commas."""
    if value is None:
        return []
    return [u.strip().rstrip("/") for u in value.split(",") if u.strip()] or [value]


def _validate(c: AgentConfig) -> None:
    for url in coordinator_urls(c.coordinator_url):
        parts = urlsplit(url)
        if parts.scheme == "http":
            raise ConfigError(
                "coordinator_url: the coordinator speaks TLS 1.3 only; use https:// (same "
                "host and port)"
            )
        if parts.scheme != "https" or not parts.hostname:
            raise ConfigError("coordinator_url: expected https://host:port")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ConfigError("coordinator_url: give the base URL only (the agent adds /v1/...)")
    fp = c.coordinator_ca_fingerprint
    if fp is not None and not re.fullmatch(r"[0-9a-f]{64}", fp.replace(":", "").lower()):
        raise ConfigError("coordinator_ca_fingerprint: the 64 hex digits of a SHA-256")
    if c.enrollment_token is not None and not _TOKEN.fullmatch(c.enrollment_token):
        raise ConfigError("enrollment_token: 1-128 characters of A-Z a-z 0-9 . _ ~ -")
    _ip("listen.host", c.listen_host)
    if c.advertise_address is not None:
        _ip("listen.advertise_address", c.advertise_address)
        if ipaddress.ip_address(c.advertise_address).is_unspecified:
            raise ConfigError("listen.advertise_address: must be an address peers can reach")
    if not 0 <= c.listen_port <= 65535:
        raise ConfigError("listen.port: must be 0-65535 (0 picks a free port)")
    if c.listen_max_connections_per_address < 1:
        raise ConfigError("listen.max_connections_per_address: must be ≥ 1")
    if not 1 <= c.wasm_max_memory_mb <= MAX_MEMORY_MB:
        raise ConfigError(f"wasm.max_memory_mb: must be 1-{MAX_MEMORY_MB}")
    if not 1 <= c.wasm_max_fuel <= MAX_FUEL:
        raise ConfigError(f"wasm.max_fuel: must be 1-{MAX_FUEL}")
    if c.wasm_cache_max_bytes < 0:
        raise ConfigError("wasm.cache_max_bytes: must be ≥ 0")
    if not 1 <= c.wasm_max_module_bytes <= MAX_MODULE_BYTES:
        raise ConfigError(f"wasm.max_module_bytes: must be 1-{MAX_MODULE_BYTES}")
    _names(
        "work.tags", c.tags, TAG_PATTERN, MAX_TAGS, "a tag (1-24 of a-z 0-9 . _ -, not first . _ -)"
    )
    _names(
        "work.clients",
        c.accept_clients,
        CLIENT_PATTERN,
        MAX_CLIENTS,
        "a client's owner id (8 hex digits, as the coordinator's operator gives it)",
    )
    for key, value, lo in (
        ("heartbeat.interval_s", c.heartbeat_interval_s, 0.01),
        ("listen.header_timeout_s", c.listen_header_timeout_s, 0.01),
        ("listen.keepalive_timeout_s", c.listen_keepalive_timeout_s, 0.01),
        ("heartbeat.enroll_retry_s", c.enroll_retry_s, 0.01),
        ("telemetry.interval_s", c.telemetry_interval_s, 0.01),
        ("network.request_timeout_s", c.request_timeout_s, 0.01),
        ("network.retry_initial_s", c.retry_initial_s, 0.001),
        ("network.retry_max_s", c.retry_max_s, 0.001),
        ("traces.retention_h", c.trace_retention_s, 1.0),
        ("updates.check_interval_s", c.update_check_interval_s, 0.01),
        ("updates.health_deadline_s", c.update_health_deadline_s, 0.01),
    ):
        if value < lo:
            raise ConfigError(f"{key}: must be positive")
    if c.shutdown_grace_s < 0:
        raise ConfigError("network.shutdown_grace_s: must not be negative")
    if c.retry_max_s < c.retry_initial_s:
        raise ConfigError("network.retry_max_s: must not be below network.retry_initial_s")
    if not 0 <= c.heartbeat_jitter < 1:
        raise ConfigError("heartbeat.jitter: must be a fraction in [0, 1)")
    try:
        c.energy  # noqa: B018 - validates the thresholds
    except ValueError as exc:
        raise ConfigError(f"energy.{exc}") from None
    if c.telemetry_source not in TELEMETRY_SOURCES:
        raise ConfigError(f"telemetry.source: one of {', '.join(TELEMETRY_SOURCES)}")
    if c.telemetry_source == "simulated" and c.telemetry_profile is None:
        raise ConfigError('telemetry.profile: required with telemetry.source = "simulated"')
    if c.telemetry_source != "simulated" and c.telemetry_profile is not None:
        raise ConfigError('telemetry.profile: only used with telemetry.source = "simulated"')
    if not 1 <= c.max_queued_tasks <= MAX_QUEUED_TASKS:
        raise ConfigError(f"max_queued_tasks: must be 1-{MAX_QUEUED_TASKS}")
    if c.outbox_max_count < 1:
        raise ConfigError("outbox.max_count: must be at least 1")
    if c.outbox_max_bytes < 1024:
        raise ConfigError("outbox.max_bytes: must be at least 1024")
    for address in c.mdns_interfaces:
        _ip("mdns.interfaces", address)
        if ipaddress.ip_address(address).version != 4:
            raise ConfigError(f"mdns.interfaces: {address} is not IPv4 (mDNS runs over IPv4)")
    if not 0 <= c.cheat_fraction <= 1:
        raise ConfigError("demo.cheat_fraction: must be between 0 and 1")
    if c.cheat_fraction > 0 and c.telemetry_source != "simulated":
        raise ConfigError(
            "demo.cheat_fraction: the demo cheating mode is only allowed together with "
            'telemetry.source = "simulated"'
        )


def _ip(key: str, value: str) -> None:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        raise ConfigError(f"{key}: {value!r} is not an IP address") from None


def _names(key: str, values: tuple[str, ...], pattern: str, most: int, shape: str) -> None:
    if len(values) > most:
        raise ConfigError(f"{key}: at most {most}")
    for value in values:
        if not re.fullmatch(pattern, value):
            raise ConfigError(f"{key}: {value!r} is not {shape}")
