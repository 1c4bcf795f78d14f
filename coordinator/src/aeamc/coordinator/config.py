"""Coordinator configuration: one TOML file, one frozen dataclass per section.

Every default is the documented one (docs/coordinator.md); an unknown key or a value of
the wrong type is a configuration error (exit 78) rather than something silently ignored.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import re
import stat
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from aeamc.shared import reputation
from aeamc.shared.eps import EpsConfig
from aeamc.shared.errors import ValidationError
from aeamc.shared.rpcurls import rpc_url_problem
from aeamc.shared.runtime.configfiles import ConfigError, read_config_files
from aeamc.shared.runtime.files import atomic_write
from aeamc.shared.runtime.pkcs11 import Pkcs11Error, Pkcs11Uri, is_pkcs11_uri

from .alerts import AlertsConfig, alerts_checks
from .cluster import ClusterConfig, cluster_checks
from .privacypolicy import PrivacyConfig, privacy_checks
from .securitytxt import SecurityConfig, security_checks
from .storage import DatabaseConfig, database_checks

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"  # noqa: S104 - a LAN service listens on the LAN
    port: int = 8443
    #: Address advertised over mDNS; empty = the addresses of the host's interfaces.
    advertise_address: str = ""
    max_body_bytes: int = 16 * 1024 * 1024
    #: Seconds from accepting a connection to its first complete request head, TLS
    #: handshake included; a connection that has not sent it by then is closed.
    header_timeout_s: float = 10.0
    #: Seconds an idle kept-alive connection stays open (and the most a later request
    #: head on it may take); above agents' heartbeat gap, so heartbeats reuse it.
    keepalive_timeout_s: float = 120.0
    #: Open connections one source address may hold; beyond it a connection is closed
    #: at once. A LAN device holds one or two; raise it for many simulated devices on
    #: one address (benchmarks, a demo network on loopback).
    max_connections_per_address: int = 64
    #: Longest ``GET /v1/tasks/{id}?wait_s=`` may hold its answer, in seconds.
    max_wait_s: int = 60
    #: Worker processes serving the port together (SPEC §16); 0: one per core.
    workers: int = 0
    #: Heartbeat and proof requests this process handles at once; one more is answered
    #: 503 ``overloaded`` with ``Retry-After`` before its body is read (overload.py); 0: any.
    max_inflight: int = 1024
    #: How long (ms) requests may wait in this process before heartbeats and proofs are
    #: shed with that 503 too (overload.py); 0: off.
    max_queue_delay_ms: int = 100
    #: The ``Retry-After`` of that 503, in whole seconds; agents add jitter of their own.
    overload_retry_after_s: int = 5
    mdns: bool = True
    #: Comma-separated IPv4 addresses of the interfaces for mDNS; empty = all of them.
    mdns_interfaces: str = ""


@dataclass(frozen=True)
class ProtocolConfig:
    cluster_id: int = 1
    heartbeat_window_s: int = 60
    pot_window_s: int = 300
    heartbeat_interval_s: int = 30
    #: A device that has not sent a heartbeat for this long is ``stale``.
    stale_after_s: int = 90
    telemetry_retention_days: int = 30


@dataclass(frozen=True)
class SchedulerConfig:
    tick_s: float = 0.5
    assignment_timeout_s: int = 600
    #: Assignments a device may hold at once before it counts as busy.
    max_inflight_per_device: int = 2
    push_timeout_s: float = 10.0
    max_replicas: int = 5


@dataclass(frozen=True)
class BlockConfig:
    interval_s: float = 10.0
    max_receipts: int = 1000


@dataclass(frozen=True)
class SpotCheckConfig:
    #: Chunks opened per challenge (k in SPEC §2).
    k: int = 4
    #: Passes after which a device's check rate starts to decay (trust_after / passes).
    trust_after: int = 10
    #: The check rate never drops below this, however long the record.
    floor: float = 0.1
    #: How long one challenge may take to be answered; a later answer counts as none.
    timeout_s: float = 15.0
    max_attempts: int = 5
    retry_s: float = 10.0
    #: A device that answers "unknown task" for a proof it signed less than
    #: ``trace_retention_s`` ago (the agent's default trace retention) is quarantined at
    #: once: an honest agent keeps every trace that long, so the answer is a refusal.
    quarantine_on_unknown_task: bool = True
    trace_retention_s: int = 24 * 3600
    #: Checks left unanswered (silence, errors or invalid answers after ``max_attempts``)
    #: within ``unanswered_window_s`` that quarantine a device. Each one already voids its
    #: proof; a phone that drops off the network once loses that credit, not its standing.
    quarantine_after_unanswered: int = 3
    unanswered_window_s: int = 7 * 24 * 3600
    #: Most bytes read from a device's answer to a challenge.
    max_answer_bytes: int = 16 * 1024 * 1024
    #: The assurance a new device's check rate is derived from: a device faking this
    #: fraction of its chunks is caught within its first ``catch_within_tasks`` tasks with
    #: probability at least ``catch_probability`` (1.0: check every task of a new device).
    catch_fraction: float = 0.10
    catch_within_tasks: int = 20
    catch_probability: float = 0.99

    @functools.cached_property
    def assurance(self) -> reputation.Assurance:
        return reputation.Assurance(
            self.catch_fraction, self.catch_within_tasks, self.catch_probability
        )

    @functools.cached_property
    def policy(self) -> reputation.CheckPolicy:
        """These settings as the protocol core's spot-check rule."""
        return reputation.CheckPolicy(self.k, self.trust_after, self.floor, self.assurance)

    def new_device_rate(self, chunks: int) -> float:
        """``CheckPolicy.new_device_rate`` of these settings."""
        return self.policy.new_device_rate(chunks)

    def check_probability(self, passes: int, chunks: int) -> float:
        """``CheckPolicy.check_probability`` of these settings."""
        return self.policy.check_probability(passes, chunks)

    def should_check(self, passes: int, chunks: int, draw: float) -> bool:
        """``CheckPolicy.should_check`` of these settings."""
        return self.policy.should_check(passes, chunks, draw)


#: The protocol core's EPS defaults (SPEC §4), the one place they are written down.
_EPS = EpsConfig()


@dataclass(frozen=True)
class EpsSection:
    """``[eps]``: the protocol core's ``EpsConfig`` with its window in seconds."""

    w_battery: float = _EPS.w_battery
    w_charging: float = _EPS.w_charging
    w_temperature: float = _EPS.w_temperature
    w_network: float = _EPS.w_network
    max_temp_c: int = _EPS.max_temp_c
    max_latency_ms: int = _EPS.max_latency_ms
    min_eps: float = _EPS.min_eps
    min_poas: int = _EPS.min_poas
    poa_window_s: int = _EPS.poa_window_ms // 1000

    def to_eps_config(self) -> EpsConfig:
        """These settings as the protocol core takes them (validated there)."""
        values = dataclasses.asdict(self)
        return EpsConfig(poa_window_ms=values.pop("poa_window_s") * 1000, **values)


@dataclass(frozen=True)
class ChainConfig:
    """Anchoring (docs/anchoring.md). No ``rpc_url``: an in-process chain, lost on restart."""

    enabled: bool = True
    #: JSON-RPC endpoint; empty = the embedded in-process chain. https://, or http:// to
    #: this host's loopback (a local node).
    rpc_url: str = ""
    #: Take a plain http:// ``rpc_url`` to another host (a node on a segment you trust):
    #: anyone on the path could then answer for the chain.
    allow_plain_http_rpc: bool = False
    #: MicroblockAnchor address (``aeamc-coordinator chain deploy`` writes it).
    contract: str = ""
    #: Expected chain id; 0 = whatever the endpoint reports.
    chain_id: int = 0
    #: secp256k1 key of the anchoring wallet: a key file path or a ``pkcs11:`` URI
    #: (docs/security-keys.md); empty = ``wallet_key_file``.
    wallet_key: str = ""
    #: Older name for a key file path; empty (and no wallet_key) = ``state_dir/anchor-wallet.key``.
    wallet_key_file: str = ""
    anchor_interval_s: float = 10.0
    confirmations: int = 3
    #: How often receipts, the head and the wallet balance are checked.
    poll_s: float = 1.0
    rpc_timeout_s: float = 10.0
    #: A transaction not included this long after sending is replaced with higher fees.
    stuck_after_s: float = 180.0
    max_fee_gwei: float = 200.0
    #: Tip per gas; 0 = what the node suggests (``eth_maxPriorityFeePerGas``).
    priority_fee_gwei: float = 0.0


@dataclass(frozen=True)
class TlsConfig:
    """The coordinator's CA and certificates (docs/coordinator.md#tls)."""

    #: Lifetime of a device's client certificate; agents renew after two thirds of it.
    device_cert_lifetime_s: int = 30 * 86400
    #: Lifetime of the coordinator's own certificate (re-issued at start and before expiry).
    server_cert_lifetime_s: int = 90 * 86400
    #: Comma-separated extra DNS names or IP addresses for the coordinator's certificate.
    server_names: str = ""


@dataclass(frozen=True)
class LimitsConfig:
    """Rate limits (token buckets) answered with 429 and ``Retry-After``."""

    #: Requests per second (sustained) and burst per client address.
    per_address_rate: float = 50.0
    per_address_burst: int = 200
    #: Requests per second and burst per device (by its client certificate).
    per_device_rate: float = 10.0
    per_device_burst: int = 60
    #: Comma-separated addresses never limited (the host itself: CLI, dashboard, demo).
    exempt: str = "127.0.0.1,::1"


@dataclass(frozen=True)
class EnrollmentConfig:
    """Who may enroll, and how many may wait for approval (docs/coordinator.md#enrollment)."""

    #: A token-less enrollment not approved within this many seconds is forgotten.
    pending_ttl_s: int = 7 * 86400
    #: Most identities waiting for approval at once; past it a new one gets 429.
    max_pending: int = 1000
    #: Most identities waiting for approval enrolled from one address; past it, 429.
    max_pending_per_address: int = 16
    #: Comma-separated networks (CIDR) a device's endpoint may be in besides the address
    #: its enrollment comes from; empty: only that address.
    endpoint_networks: str = ""


@dataclass(frozen=True)
class TokensConfig:
    """Defaults of enrollment tokens created without ``uses`` or ``ttl_s``."""

    enroll_default_uses: int = 10
    enroll_default_ttl_s: int = 86400


@dataclass(frozen=True)
class UpdatesConfig:
    """Fleet updates (docs/updates.md): the TUF repository's keys and expiries, and when a
    rollout halts by itself."""

    #: Role keys: a key file (relative to state_dir) or a ``pkcs11:`` URI. Empty root and
    #: targets keys are offline: the release commands take them from ``--keys DIR``.
    root_key: str = ""
    targets_key: str = ""
    #: Empty: ``state_dir/updates/keys/<role>.key``, created by ``release init``.
    snapshot_key: str = ""
    timestamp_key: str = ""
    root_expiry_days: int = 365
    targets_expiry_days: int = 90
    snapshot_expiry_days: int = 7
    timestamp_expiry_s: int = 86400
    #: How often the running coordinator checks whether snapshot/timestamp need re-signing.
    resign_check_s: float = 600.0
    #: A rollout halts once more than this share of its targeted devices failed it...
    halt_failure_share: float = 0.2
    #: ...and at least this many did.
    halt_min_failures: int = 1


@dataclass(frozen=True)
class CoordinatorConfig:
    state_dir: Path = Path("/var/lib/microblock-coordinator")
    #: Coordinator identity: a key file path or a ``pkcs11:`` URI; empty = state_dir/identity.key.
    identity_key: str = ""
    #: The CA key: a key file path or a ``pkcs11:`` URI; empty = state_dir/ca/ca.key.
    ca_key: str = ""
    server: ServerConfig = field(default_factory=ServerConfig)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    blocks: BlockConfig = field(default_factory=BlockConfig)
    spot_checks: SpotCheckConfig = field(default_factory=SpotCheckConfig)
    eps: EpsSection = field(default_factory=EpsSection)
    chain: ChainConfig = field(default_factory=ChainConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    enrollment: EnrollmentConfig = field(default_factory=EnrollmentConfig)
    tokens: TokensConfig = field(default_factory=TokensConfig)
    updates: UpdatesConfig = field(default_factory=UpdatesConfig)
    security: SecurityConfig = field(default_factory=SecurityConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    @property
    def db_path(self) -> Path:
        return self.state_dir / "coordinator.db"

    @property
    def wallet_path(self) -> Path:
        ref = self.chain.wallet_key if not is_pkcs11_uri(self.chain.wallet_key) else ""
        path = Path(ref or self.chain.wallet_key_file or "anchor-wallet.key")
        return path if path.is_absolute() else self.state_dir / path

    @property
    def wallet_ref(self) -> str | Path:
        """The wallet key: a ``pkcs11:`` URI or the key file path."""
        if is_pkcs11_uri(self.chain.wallet_key):
            return self.chain.wallet_key
        return self.wallet_path

    @property
    def key_path(self) -> Path:
        if self.identity_key and not is_pkcs11_uri(self.identity_key):
            path = Path(self.identity_key)
            return path if path.is_absolute() else self.state_dir / path
        return self.state_dir / "identity.key"

    @property
    def key_ref(self) -> str | Path:
        """The identity key: a ``pkcs11:`` URI or the key file path."""
        return self.identity_key if is_pkcs11_uri(self.identity_key) else self.key_path


#: Each ``[section]`` of the file and its dataclass: the fields of the configuration that
#: are sections.
_SECTIONS: dict[str, type] = {
    f.name: f.default_factory  # type: ignore[misc]
    for f in dataclasses.fields(CoordinatorConfig)
    if f.default_factory is not dataclasses.MISSING
}


def _coerce(section: str, cls: type, values: Any) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"[{section}] must be a table")
    known = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"{section}.{key}: unknown setting")
        default = known[key].default
        expected = type(default)
        coerced = value
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            coerced = float(value)
        if not isinstance(coerced, expected) or isinstance(value, bool) != isinstance(
            default, bool
        ):
            raise ConfigError(
                f"{section}.{key}: expected {expected.__name__}, got {type(value).__name__}"
            )
        out[key] = coerced
    return cls(**out)


def parse_config(data: dict[str, Any], *, base_dir: Path | None = None) -> CoordinatorConfig:
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "state_dir":
            if not isinstance(value, str) or not value:
                raise ConfigError("state_dir: expected a path")
            path = Path(value)
            if not path.is_absolute() and base_dir is not None:
                path = base_dir / path
            kwargs["state_dir"] = path
        elif key in ("identity_key", "ca_key"):
            if not isinstance(value, str):
                raise ConfigError(f"{key}: expected a path or a pkcs11: URI")
            kwargs[key] = value
        elif key in _SECTIONS:
            kwargs[key] = _coerce(key, _SECTIONS[key], value)
        else:
            raise ConfigError(f"{key}: unknown setting")
    config = CoordinatorConfig(**kwargs)
    validate(config)
    return config


def validate(config: CoordinatorConfig) -> None:
    checks = [
        (0 <= config.server.port <= 65535, "server.port must be 0..65535"),
        (config.server.max_body_bytes >= 1024, "server.max_body_bytes must be at least 1024"),
        (config.server.header_timeout_s > 0, "server.header_timeout_s must be > 0"),
        (config.server.keepalive_timeout_s > 0, "server.keepalive_timeout_s must be > 0"),
        (
            config.server.max_connections_per_address >= 1,
            "server.max_connections_per_address must be ≥ 1",
        ),
        (0 <= config.server.max_wait_s <= 600, "server.max_wait_s must be 0..600"),
        (config.server.max_inflight >= 0, "server.max_inflight must be ≥ 0 (0: no bound)"),
        (0 <= config.server.max_queue_delay_ms <= 60_000, "server.max_queue_delay_ms: 0..60000"),
        (
            1 <= config.server.overload_retry_after_s <= 3600,
            "server.overload_retry_after_s must be 1..3600",
        ),
        (0 <= config.protocol.cluster_id <= 0xFFFFFFFF, "protocol.cluster_id must fit in u32"),
        (config.protocol.heartbeat_window_s > 0, "protocol.heartbeat_window_s must be > 0"),
        (config.protocol.pot_window_s > 0, "protocol.pot_window_s must be > 0"),
        (config.protocol.stale_after_s > 0, "protocol.stale_after_s must be > 0"),
        (config.scheduler.tick_s > 0, "scheduler.tick_s must be > 0"),
        (config.scheduler.assignment_timeout_s > 0, "scheduler.assignment_timeout_s must be > 0"),
        (config.scheduler.max_inflight_per_device >= 1, "max_inflight_per_device must be ≥ 1"),
        (config.scheduler.max_replicas >= 1, "scheduler.max_replicas must be ≥ 1"),
        (config.blocks.interval_s > 0, "blocks.interval_s must be > 0"),
        (1 <= config.blocks.max_receipts <= 0xFFFF, "blocks.max_receipts must be 1..65535"),
        (config.spot_checks.k >= 1, "spot_checks.k must be ≥ 1"),
        (0 <= config.spot_checks.floor <= 1, "spot_checks.floor must be 0..1"),
        (config.spot_checks.max_attempts >= 1, "spot_checks.max_attempts must be ≥ 1"),
        (config.spot_checks.timeout_s > 0, "spot_checks.timeout_s must be > 0"),
        (
            config.spot_checks.quarantine_after_unanswered >= 1,
            "spot_checks.quarantine_after_unanswered must be ≥ 1",
        ),
        (config.spot_checks.unanswered_window_s >= 1, "spot_checks.unanswered_window_s ≥ 1"),
        (config.spot_checks.max_answer_bytes >= 1024, "spot_checks.max_answer_bytes ≥ 1024"),
        (
            0 < config.spot_checks.catch_fraction <= 1,
            "spot_checks.catch_fraction must be in (0, 1]",
        ),
        (config.spot_checks.catch_within_tasks >= 1, "spot_checks.catch_within_tasks must be ≥ 1"),
        (
            0 < config.spot_checks.catch_probability <= 1,
            "spot_checks.catch_probability must be in (0, 1]",
        ),
        *_chain_checks(config.chain),
        (config.tls.device_cert_lifetime_s >= 1, "tls.device_cert_lifetime_s must be ≥ 1"),
        (config.tls.server_cert_lifetime_s >= 60, "tls.server_cert_lifetime_s must be ≥ 60"),
        (config.limits.per_address_rate > 0, "limits.per_address_rate must be > 0"),
        (config.limits.per_address_burst >= 1, "limits.per_address_burst must be ≥ 1"),
        (config.limits.per_device_rate > 0, "limits.per_device_rate must be > 0"),
        (config.limits.per_device_burst >= 1, "limits.per_device_burst must be ≥ 1"),
        *alerts_checks(config.alerts),
        *_updates_checks(config.updates),
        *security_checks(config.security),
        *privacy_checks(config.privacy),
        *database_checks(config.database),
        *cluster_checks(config.cluster, bool(config.database.url), config.server.advertise_address),
        (config.enrollment.pending_ttl_s >= 1, "enrollment.pending_ttl_s must be ≥ 1"),
        (config.enrollment.max_pending >= 0, "enrollment.max_pending must be ≥ 0"),
        (
            config.enrollment.max_pending_per_address >= 0,
            "enrollment.max_pending_per_address must be ≥ 0",
        ),
        (config.tokens.enroll_default_uses >= 1, "tokens.enroll_default_uses must be ≥ 1"),
        (config.tokens.enroll_default_ttl_s >= 1, "tokens.enroll_default_ttl_s must be ≥ 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    try:
        endpoint_networks(config.enrollment)
    except ValueError as exc:
        raise ConfigError(f"enrollment.endpoint_networks: {exc}") from None
    try:
        config.eps.to_eps_config()
    except ValidationError as exc:
        raise ConfigError(str(exc)) from None
    if config.chain.wallet_key and config.chain.wallet_key_file:
        raise ConfigError("chain.wallet_key and chain.wallet_key_file: set one, not both")
    for name, ref in (
        ("identity_key", config.identity_key),
        ("ca_key", config.ca_key),
        ("chain.wallet_key", config.chain.wallet_key),
        *((f"updates.{r}_key", getattr(config.updates, f"{r}_key")) for r in _TUF_ROLES),
    ):
        if is_pkcs11_uri(ref):
            try:
                Pkcs11Uri.parse(ref)
            except Pkcs11Error as exc:
                raise ConfigError(f"{name}: {exc}") from None


def endpoint_networks(e: EnrollmentConfig) -> tuple[IpNetwork, ...]:
    """The networks of ``enrollment.endpoint_networks`` (ValueError: one is not a CIDR)."""
    return tuple(
        ipaddress.ip_network(n.strip(), strict=False)
        for n in e.endpoint_networks.split(",")
        if n.strip()
    )


_TUF_ROLES = ("root", "targets", "snapshot", "timestamp")


def _updates_checks(u: UpdatesConfig) -> list[tuple[bool, str]]:
    return [
        (u.root_expiry_days >= 1, "updates.root_expiry_days must be ≥ 1"),
        (u.targets_expiry_days >= 1, "updates.targets_expiry_days must be ≥ 1"),
        (u.snapshot_expiry_days >= 1, "updates.snapshot_expiry_days must be ≥ 1"),
        (u.timestamp_expiry_s >= 60, "updates.timestamp_expiry_s must be ≥ 60"),
        (u.resign_check_s > 0, "updates.resign_check_s must be > 0"),
        (
            u.resign_check_s * 2 < u.timestamp_expiry_s,
            "updates.resign_check_s must be under half of updates.timestamp_expiry_s",
        ),
        (0 <= u.halt_failure_share < 1, "updates.halt_failure_share must be 0..1 (exclusive)"),
        (u.halt_min_failures >= 1, "updates.halt_min_failures must be ≥ 1"),
    ]


def _chain_checks(c: ChainConfig) -> list[tuple[bool, str]]:
    rpc_problem = c.rpc_url and rpc_url_problem(c.rpc_url, allow_plain_http=c.allow_plain_http_rpc)
    return [
        (not rpc_problem, f"chain.rpc_url {rpc_problem}"),
        (
            not c.contract or re.fullmatch(r"0x[0-9a-fA-F]{40}", c.contract) is not None,
            "chain.contract must be a 0x-prefixed 20-byte address",
        ),
        (0 <= c.chain_id < 2**53, "chain.chain_id must be 0..2^53-1"),
        (c.anchor_interval_s > 0, "chain.anchor_interval_s must be > 0"),
        (0 <= c.confirmations <= 10_000, "chain.confirmations must be 0..10000"),
        (c.poll_s > 0, "chain.poll_s must be > 0"),
        (c.rpc_timeout_s > 0, "chain.rpc_timeout_s must be > 0"),
        (c.stuck_after_s > 0, "chain.stuck_after_s must be > 0"),
        (c.max_fee_gwei > 0, "chain.max_fee_gwei must be > 0"),
        (0 <= c.priority_fee_gwei <= c.max_fee_gwei, "chain.priority_fee_gwei must be 0..max"),
    ]


def write_setting(path: Path, section: str, key: str, value: str) -> CoordinatorConfig:
    """Set one string setting in the file and keep everything else as the operator wrote
    it (comments, order); the result must still load, or the file is left untouched."""
    lines = path.read_text().splitlines()
    setting = tomli_w.dumps({key: value}).strip()
    out: list[str] = []
    current = None
    done = False
    for line in lines:
        stripped = line.strip()
        if stripped.startswith("[") and not done and current == section:
            # The section had no such key: add it after its last non-blank line.
            end = len(out)
            while end and not out[end - 1].strip():
                end -= 1
            out.insert(end, setting)
            done = True
        if stripped.startswith("["):
            current = stripped.strip("[]").strip()
        elif current == section and not done and re.match(rf"{re.escape(key)}\s*=", stripped):
            out.append(setting)
            done = True
            continue
        out.append(line)
    if not done:
        if current != section:
            out += ["", f"[{section}]"]
        out.append(setting)
    text = "\n".join(out) + "\n"
    data = tomllib.loads(text)
    config = parse_config(data, base_dir=path.parent)
    # Replaced whole, keeping the file's permissions (it may be readable by root only).
    atomic_write(path, text.encode(), mode=stat.S_IMODE(path.stat().st_mode))
    return config


def load_config(path: Path) -> CoordinatorConfig:
    try:
        data = read_config_files(path)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file (create one with `aeamc-coordinator init`)"
        ) from None
    return parse_config(data, base_dir=path.parent)


def render_config(config: CoordinatorConfig) -> str:
    """TOML text of ``config`` with every setting spelled out, for ``init``; it parses
    back to ``config`` (``tomli_w`` writes it, so any path or string round-trips)."""
    data: dict[str, Any] = {
        "state_dir": str(config.state_dir),
        "identity_key": config.identity_key,
        "ca_key": config.ca_key,
    }
    for name in _SECTIONS:
        section = getattr(config, name)
        data[name] = {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}
    header = (
        "# aeamc-coordinator configuration. Every setting is shown with its value;\n"
        "# see docs/coordinator.md for what each one means.\n"
        "# identity_key, ca_key empty: state_dir/identity.key, state_dir/ca/ca.key.\n"
    )
    return header + tomli_w.dumps(data)
