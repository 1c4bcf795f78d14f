"""mDNS service names and TXT records of agents and coordinators (SPEC §9), pure.

A TXT record is a hint, not a credential: anyone on the LAN can advertise anything. What
this module guarantees is that a parsed advert is self-consistent — ``pk`` hashes to
``id`` and the instance name is that id — so a peer that later proves possession of the
key (a signature, the TLS handshake) is the one that was advertised. Pinning a
coordinator's key is the caller's business.

Values travel as RFC 6763 §6 strings of at most 255 bytes each (``key=value``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import ValidationError
from .identity import device_id_for, parse_public_key
from .labels import CLIENT_PATTERN, MAX_CLIENTS, MAX_TAGS, TAG_PATTERN
from .messages import WasmLimits

AGENT_SERVICE_TYPE = "_aeamc-agent._tcp.local."
COORDINATOR_SERVICE_TYPE = "_aeamc-coord._tcp.local."
PROTOCOL = 1
#: RFC 6763 §6.1: one TXT string (``key=value``) is at most 255 bytes.
MAX_TXT_ENTRY = 255

_ID = re.compile(r"[0-9a-f]{32}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"[A-Za-z0-9.+~_-]{1,64}")
_KIND = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_UINT = re.compile(r"0|[1-9][0-9]{0,9}")
_BIG_UINT = re.compile(r"[1-9][0-9]{0,15}")
_TAG = re.compile(TAG_PATTERN)
_CLIENT = re.compile(CLIENT_PATTERN)

#: TXT properties as zeroconf gives them (bytes) or as built and parsed here (str).
TxtInput = (
    Mapping[str, str | None]
    | Mapping[bytes, bytes | None]
    | Mapping[str | bytes, str | bytes | None]
)


@dataclass(frozen=True, slots=True)
class AgentAdvert:
    """What an agent says about itself on the LAN (mirrors its enrollment capabilities)."""

    device_id: str
    public_key: str
    version: str
    kinds: tuple[str, ...]
    cpus: int
    mem_mb: int
    battery: bool
    proto: int = PROTOCOL
    #: Placement tags the device's owner set (``tags=a,b``).
    tags: tuple[str, ...] = ()
    #: The owner's WebAssembly limits (``wasm=<memory MiB>,<fuel>,<module bytes>``).
    wasm: WasmLimits | None = None
    #: The only clients whose work the device takes (``clients=<id>,…``); None: any.
    clients: tuple[str, ...] | None = None

    def txt(self) -> dict[str, str]:
        """The TXT properties, validated as a parser would read them."""
        props = {
            "id": self.device_id,
            "pk": self.public_key,
            "proto": str(self.proto),
            "v": self.version,
            "kinds": ",".join(self.kinds),
            "cpus": str(self.cpus),
            "mem_mb": str(self.mem_mb),
            "bat": "1" if self.battery else "0",
        }
        if self.tags:
            props["tags"] = ",".join(self.tags)
        if self.wasm is not None:
            w = self.wasm
            props["wasm"] = f"{w.max_memory_mb},{w.max_fuel},{w.max_module_bytes}"
        if self.clients is not None:
            props["clients"] = ",".join(self.clients)
        _check_sizes(props)
        parse_agent_txt(props)
        return props


@dataclass(frozen=True, slots=True)
class CoordinatorAdvert:
    """What a coordinator says about itself; ``ca`` is the SHA-256 of its CA certificate."""

    coordinator_id: str
    public_key: str
    version: str
    cluster_id: int
    ca_fingerprint: str | None = None
    proto: int = PROTOCOL

    def txt(self) -> dict[str, str]:
        props = {
            "id": self.coordinator_id,
            "pk": self.public_key,
            "proto": str(self.proto),
            "v": self.version,
            "cluster": str(self.cluster_id),
        }
        if self.ca_fingerprint is not None:
            props["ca"] = self.ca_fingerprint
        _check_sizes(props)
        parse_coordinator_txt(props)
        return props


def instance_name(identifier: str, service_type: str) -> str:
    """Full mDNS instance name: the id is the instance label (SPEC §9)."""
    return f"{identifier}.{service_type}"


def instance_label(name: str, service_type: str) -> str:
    """The instance label of ``name`` (``<label>.<service_type>``), or ``ValidationError``."""
    suffix = "." + service_type
    if not name.endswith(suffix) or len(name) == len(suffix):
        raise ValidationError("name", f"{name!r} is not an instance of {service_type}")
    return name[: -len(suffix)]


def parse_agent_txt(props: TxtInput, *, name: str | None = None) -> AgentAdvert:
    """Read an agent's TXT properties; refuse anything inconsistent or out of range."""
    txt = _decode(props)
    device_id, public_key = _identity(txt, name, AGENT_SERVICE_TYPE)
    kinds_raw = _required(txt, "kinds", max_len=MAX_TXT_ENTRY)
    kinds = tuple(k for k in kinds_raw.split(",") if k) if kinds_raw else ()
    for kind in kinds:
        if not _KIND.fullmatch(kind):
            raise ValidationError("kinds", f"{kind!r} is not a task kind name")
    bat = _required(txt, "bat")
    if bat not in ("0", "1"):
        raise ValidationError("bat", "must be 0 or 1")
    cpus = _uint(txt, "cpus")
    if cpus < 1:
        raise ValidationError("cpus", "must be at least 1")
    return AgentAdvert(
        device_id=device_id,
        public_key=public_key,
        version=_version(txt),
        kinds=kinds,
        cpus=cpus,
        mem_mb=_uint(txt, "mem_mb"),
        battery=bat == "1",
        proto=_proto(txt),
        tags=_names(txt, "tags", _TAG, MAX_TAGS) or (),
        wasm=_wasm(txt),
        clients=_names(txt, "clients", _CLIENT, MAX_CLIENTS),
    )


def parse_coordinator_txt(props: TxtInput, *, name: str | None = None) -> CoordinatorAdvert:
    """Read a coordinator's TXT properties; refuse anything inconsistent or out of range."""
    txt = _decode(props)
    coordinator_id, public_key = _identity(txt, name, COORDINATOR_SERVICE_TYPE)
    ca = txt.get("ca")
    if ca is not None and not _HEX64.fullmatch(ca):
        raise ValidationError("ca", "must be 64 lowercase hex characters (SHA-256)")
    cluster = _uint(txt, "cluster")
    if cluster > 0xFFFFFFFF:
        raise ValidationError("cluster", "must fit in 32 bits (it is the microblock cluster_id)")
    return CoordinatorAdvert(
        coordinator_id=coordinator_id,
        public_key=public_key,
        version=_version(txt),
        cluster_id=cluster,
        ca_fingerprint=ca,
        proto=_proto(txt),
    )


def kinds_that_fit(kinds: Sequence[str], budget: int = MAX_TXT_ENTRY - len("kinds=")) -> list[str]:
    """The longest prefix of ``kinds`` whose comma-joined form fits one TXT string."""
    out: list[str] = []
    used = -1
    for kind in kinds:
        if used + 1 + len(kind) > budget:
            break
        out.append(kind)
        used += 1 + len(kind)
    return out


# --- helpers ------------------------------------------------------------------------------


def _decode(props: TxtInput) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in props.items():
        k = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
        if value is None:
            continue  # a boolean attribute (RFC 6763 §6.4); none of ours are
        try:
            v = value.decode("utf-8") if isinstance(value, bytes) else value
        except UnicodeDecodeError:
            raise ValidationError(k, "not UTF-8") from None
        out[k.lower()] = v
    return out


def _required(txt: Mapping[str, str], key: str, *, max_len: int = 64) -> str:
    value = txt.get(key)
    if value is None:
        raise ValidationError(key, "missing", code="missing_field")
    if len(value) > max_len:
        raise ValidationError(key, f"longer than {max_len} characters")
    return value


def _uint(txt: Mapping[str, str], key: str) -> int:
    value = _required(txt, key)
    if not _UINT.fullmatch(value):
        raise ValidationError(key, "must be a decimal integer")
    return int(value)


def _names(
    txt: Mapping[str, str], key: str, pattern: re.Pattern[str], most: int
) -> tuple[str, ...] | None:
    """A comma-separated list of names each matching ``pattern`` (None when absent)."""
    raw = txt.get(key)
    if raw is None:
        return None
    names = tuple(raw.split(","))
    if len(names) > most:
        raise ValidationError(key, f"more than {most} items")
    for item in names:
        if not pattern.fullmatch(item):
            raise ValidationError(key, f"{item!r} is not allowed here")
    return names


def _wasm(txt: Mapping[str, str]) -> WasmLimits | None:
    raw = txt.get("wasm")
    if raw is None:
        return None
    parts = raw.split(",")
    if len(parts) != 3 or not all(_BIG_UINT.fullmatch(p) for p in parts):
        raise ValidationError("wasm", "must be <memory MiB>,<fuel>,<module bytes>")
    memory, fuel, module = (int(p) for p in parts)
    return WasmLimits(max_memory_mb=memory, max_fuel=fuel, max_module_bytes=module)


def _proto(txt: Mapping[str, str]) -> int:
    proto = _uint(txt, "proto")
    if proto != PROTOCOL:
        raise ValidationError("proto", f"protocol {proto} is not supported (this is {PROTOCOL})")
    return proto


def _version(txt: Mapping[str, str]) -> str:
    version = _required(txt, "v")
    if not _VERSION.fullmatch(version):
        raise ValidationError("v", "not a version string")
    return version


def _identity(txt: Mapping[str, str], name: str | None, service_type: str) -> tuple[str, str]:
    identifier = _required(txt, "id")
    if not _ID.fullmatch(identifier):
        raise ValidationError("id", "must be 32 lowercase hex characters")
    pk = _required(txt, "pk")
    if device_id_for(parse_public_key(pk, "pk")) != identifier:
        raise ValidationError("pk", "public key does not match id")
    if name is not None and instance_label(name, service_type) != identifier:
        raise ValidationError("name", "instance name is not the advertised id")
    return identifier, pk


def _check_sizes(props: Mapping[str, str]) -> None:
    for key, value in props.items():
        if len(f"{key}={value}".encode()) > MAX_TXT_ENTRY:
            raise ValidationError(key, f"TXT entry longer than {MAX_TXT_ENTRY} bytes")
