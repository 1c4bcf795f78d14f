"""The signed protocol messages of SPEC §2 and §9 as frozen, strictly parsed models.

``parse(Model, data)`` accepts exactly the JSON the spec describes and nothing else, so a
parsed model's ``to_dict()`` is byte-for-byte the object that was signed: signatures are
verified on it without keeping the raw request around.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from .canonical import MAX_SAFE_INT
from .errors import FreshnessError, ValidationError
from .identity import (
    Signer,
    check_key_matches_id,
    parse_public_key,
    sign_message,
    verify_signature,
)
from .labels import CLIENT_PATTERN, MAX_CLIENTS, MAX_TAGS, TAG_PATTERN
from .schema import (
    Validator,
    array,
    boolean,
    constant,
    hex_bytes,
    integer,
    json_object,
    nullable,
    optional,
    record,
    text,
)

TASK_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,63}"
KIND_PATTERN = r"[a-z0-9][a-z0-9._-]{0,63}"
MAX_CHUNKS = 65_536
#: Largest single chunk output a device may return (and the coordinator will store).
MAX_CHUNK_OUTPUT = 1 << 20
MAX_MERKLE_DEPTH = 64

device_id_field = hex_bytes(16)
task_id_field = text(64, TASK_ID_PATTERN)
timestamp_field = integer(0, MAX_SAFE_INT)
digest_field = hex_bytes(32)
signature_field = hex_bytes(64)


class Model:
    """Shared behaviour of the message models: strict parsing and exact serialisation."""

    FIELDS: ClassVar[dict[str, Any]]

    @classmethod
    def validator(cls) -> Validator:
        return record(cls.FIELDS, cls)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, is_optional in _members(type(self)):
            value = getattr(self, name)
            if value is None and is_optional:
                continue
            out[name] = value if type(value) in _SCALARS else _plain(value)
        return out


#: Each model's members in declaration order, and whether each is optional: read once per
#: class rather than from ``dataclasses.fields`` for every message serialised.
_MEMBERS: dict[type, tuple[tuple[str, bool], ...]] = {}
#: Values that serialise as they are (exact types: a subclass goes the long way).
_SCALARS = frozenset({str, int, bool, type(None)})


def _members(cls: type[Model]) -> tuple[tuple[str, bool], ...]:
    members = _MEMBERS.get(cls)
    if members is None:
        members = _MEMBERS[cls] = tuple(
            (f.name, _is_optional(cls.FIELDS[f.name]))
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        )
    return members


def _is_optional(spec: Any) -> bool:
    return isinstance(spec, tuple)


def _plain(value: Any) -> Any:
    if type(value) in _SCALARS:
        return value
    if isinstance(value, Model):
        return value.to_dict()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


M = TypeVar("M", bound=Model)


def parse(model: type[M], data: Any, path: str = "") -> M:
    """Parse ``data`` (decoded JSON) as ``model`` or raise ``ValidationError``."""
    return record(model.FIELDS, model)(data, path)  # type: ignore[no-any-return]


class SignedMessage(Model):
    TYPE: ClassVar[str]
    signature: str

    def signed_dict(self) -> dict[str, Any]:
        return self.to_dict()

    def verify(self, public_key: bytes, *, signer_id: str | None = None) -> None:
        """Check that ``public_key`` fits ``signer_id`` and signed exactly this object."""
        if signer_id is not None:
            check_key_matches_id(public_key, signer_id)
        verify_signature(self.to_dict(), public_key)


def sign(model: type[M], body: Mapping[str, Any], signer: Signer) -> M:
    """Validate ``body`` (everything but the signature), sign it and return the model."""
    return parse(model, sign_message(body, signer))


def check_fresh(timestamp: int, now_ms: int, window_ms: int, field: str = "timestamp") -> None:
    """Refuse timestamps more than ``window_ms`` away from ``now_ms`` in either direction."""
    if abs(now_ms - timestamp) > window_ms:
        raise FreshnessError(
            f"{field} is {abs(now_ms - timestamp)} ms away from now (window {window_ms} ms)"
        )


# --- telemetry and capabilities ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Telemetry(Model):
    """Integer-unit readings; ``None`` means the device cannot tell, never a guess."""

    battery_pct: int | None
    charging: bool | None
    cpu_temp_mc: int | None
    cpu_load_permille: int | None
    net_latency_us: int | None
    mem_available_kb: int | None

    FIELDS: ClassVar[dict[str, Any]] = {
        "battery_pct": nullable(integer(0, 100)),
        "charging": nullable(boolean()),
        "cpu_temp_mc": nullable(integer(-60_000, 200_000)),
        "cpu_load_permille": nullable(integer(0, 1000)),
        "net_latency_us": nullable(integer(0, 3_600_000_000)),
        "mem_available_kb": nullable(integer(0, 1 << 50)),
    }


@dataclass(frozen=True, slots=True)
class WasmLimits(Model):
    """The most WebAssembly work its owner lets one chunk on a device ask for (the agent's
    ``[wasm]`` limits): the scheduler offers nothing beyond them, the agent refuses it."""

    max_memory_mb: int
    max_fuel: int
    max_module_bytes: int

    FIELDS: ClassVar[dict[str, Any]] = {
        "max_memory_mb": integer(1, 1 << 20),
        "max_fuel": integer(1, MAX_SAFE_INT),
        "max_module_bytes": integer(1, 1 << 40),
    }


@dataclass(frozen=True, slots=True)
class Capabilities(Model):
    """What a device offers; mirrors the agent's mDNS TXT record (SPEC §9).

    ``tags``, ``wasm`` and ``clients`` are absent from a device that sets none (and from
    agents older than them), so such a device's capabilities keep their old bytes:
    ``clients`` absent means every client's work is welcome."""

    kinds: tuple[str, ...]
    cpus: int
    mem_mb: int
    battery: bool
    version: str
    endpoint: str | None
    tags: tuple[str, ...] | None = None
    wasm: WasmLimits | None = None
    clients: tuple[str, ...] | None = None

    FIELDS: ClassVar[dict[str, Any]] = {
        "kinds": array(text(64, KIND_PATTERN), 32),
        "cpus": integer(1, 4096),
        "mem_mb": integer(0, 1 << 30),
        "battery": boolean(),
        "version": text(64, r"[A-Za-z0-9.+~_-]+"),
        "endpoint": nullable(text(256, r"https?://[A-Za-z0-9.:\[\]_-]+(/[A-Za-z0-9._~/-]*)?")),
        "tags": optional(array(text(24, TAG_PATTERN), MAX_TAGS)),
        "wasm": optional(WasmLimits.validator()),
        "clients": optional(array(text(8, CLIENT_PATTERN), MAX_CLIENTS, min_items=1)),
    }


@dataclass(frozen=True, slots=True)
class ExecutionMetadata(Model):
    execution_time_ms: int
    cpu_time_ms: int
    chunks: int

    FIELDS: ClassVar[dict[str, Any]] = {
        "execution_time_ms": integer(0, MAX_SAFE_INT),
        "cpu_time_ms": integer(0, MAX_SAFE_INT),
        "chunks": integer(1, MAX_CHUNKS),
    }


@dataclass(frozen=True, slots=True)
class ChunkOpening(Model):
    index: int
    output: str
    path: tuple[str, ...]

    FIELDS: ClassVar[dict[str, Any]] = {
        "index": integer(0, MAX_CHUNKS - 1),
        "output": hex_bytes(max_bytes=MAX_CHUNK_OUTPUT),
        "path": array(digest_field, MAX_MERKLE_DEPTH),
    }


# --- signed messages -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Enroll(SignedMessage):
    TYPE: ClassVar[str] = "enroll"
    type: str
    public_key: str
    device_id: str
    timestamp: int
    capabilities: Capabilities
    signature: str
    token: str | None = None
    #: DER of a certificate request for the device's TLS key, hex (SPEC §12): signed along
    #: with the rest, so the identity vouches for the key the coordinator certifies.
    csr: str | None = None

    FIELDS: ClassVar[dict[str, Any]] = {
        "type": constant("enroll"),
        "public_key": hex_bytes(32),
        "device_id": device_id_field,
        "timestamp": timestamp_field,
        "capabilities": Capabilities.validator(),
        "token": optional(text(128, r"[A-Za-z0-9._~-]+")),
        "csr": optional(hex_bytes(max_bytes=2048)),
        "signature": signature_field,
    }

    @property
    def public_key_bytes(self) -> bytes:
        return parse_public_key(self.public_key)

    def verify_self(self) -> None:
        """An enrollment is self-signed: the key it carries must fit its id and signature."""
        self.verify(self.public_key_bytes, signer_id=self.device_id)


#: Most tasks one heartbeat reports work on (SPEC §2.4); a device holding more reports the
#: running one and the oldest queued ones.
MAX_WORK_REPORTS = 64
#: The member of a heartbeat's answer by which a coordinator says it reads ``work``: a
#: device sends ``work`` only then, since an older coordinator refuses a member it does not
#: know (SPEC §2.1) and would refuse the whole heartbeat.
READS_WORK = "reads_work"


@dataclass(frozen=True, slots=True)
class WorkReport(Model):
    """One task a device holds and how many of its chunks are done, as its heartbeat says.

    Display data only: it moves no task forward and earns nothing, so the coordinator can
    take it at the device's word, within the bounds of an assignment the device holds."""

    task_id: str
    chunks_done: int

    FIELDS: ClassVar[dict[str, Any]] = {
        "task_id": task_id_field,
        "chunks_done": integer(0, MAX_CHUNKS),
    }


@dataclass(frozen=True, slots=True)
class PoA(SignedMessage):
    TYPE: ClassVar[str] = "poa"
    type: str
    device_id: str
    timestamp: int
    seq: int
    telemetry: Telemetry
    signature: str
    #: The work in hand (SPEC §2.4), absent when there is none or the coordinator does not
    #: read it: a heartbeat without it is byte for byte what it was before it existed.
    work: tuple[WorkReport, ...] | None = None

    FIELDS: ClassVar[dict[str, Any]] = {
        "type": constant("poa"),
        "device_id": device_id_field,
        "timestamp": timestamp_field,
        "seq": integer(0, MAX_SAFE_INT),
        "telemetry": Telemetry.validator(),
        "work": optional(array(WorkReport.validator(), MAX_WORK_REPORTS, min_items=1)),
        "signature": signature_field,
    }


@dataclass(frozen=True, slots=True)
class Assignment(SignedMessage):
    TYPE: ClassVar[str] = "assignment"
    type: str
    task_id: str
    device_id: str
    coordinator_id: str
    kind: str
    params: dict[str, Any]
    chunks: int
    issued_at: int
    expires_at: int
    signature: str
    #: The owner id of the client whose task this is, so a device that accepts only some
    #: clients' work can tell (absent for tasks from before clients had ids).
    client: str | None = None

    FIELDS: ClassVar[dict[str, Any]] = {
        "type": constant("assignment"),
        "task_id": task_id_field,
        "device_id": device_id_field,
        "coordinator_id": device_id_field,
        "kind": text(64, KIND_PATTERN),
        "params": json_object(),
        "chunks": integer(1, MAX_CHUNKS),
        "issued_at": timestamp_field,
        "expires_at": timestamp_field,
        "client": optional(text(8, CLIENT_PATTERN)),
        "signature": signature_field,
    }


@dataclass(frozen=True, slots=True)
class PoT(SignedMessage):
    TYPE: ClassVar[str] = "pot"
    type: str
    task_id: str
    device_id: str
    timestamp: int
    output_digest: str
    trace_root: str
    device_nonce: str
    checkpoint: str
    execution_metadata: ExecutionMetadata
    signature: str

    FIELDS: ClassVar[dict[str, Any]] = {
        "type": constant("pot"),
        "task_id": task_id_field,
        "device_id": device_id_field,
        "timestamp": timestamp_field,
        "output_digest": digest_field,
        "trace_root": digest_field,
        "device_nonce": hex_bytes(16),
        "checkpoint": digest_field,
        "execution_metadata": ExecutionMetadata.validator(),
        "signature": signature_field,
    }


@dataclass(frozen=True, slots=True)
class Challenge(SignedMessage):
    TYPE: ClassVar[str] = "challenge"
    type: str
    task_id: str
    device_id: str
    block_hash: str
    indices: tuple[int, ...]
    issued_at: int
    signature: str

    FIELDS: ClassVar[dict[str, Any]] = {
        "type": constant("challenge"),
        "task_id": task_id_field,
        "device_id": device_id_field,
        "block_hash": digest_field,
        "indices": array(integer(0, MAX_CHUNKS - 1), 256, min_items=1),
        "issued_at": timestamp_field,
        "signature": signature_field,
    }


@dataclass(frozen=True, slots=True)
class Opening(SignedMessage):
    TYPE: ClassVar[str] = "opening"
    type: str
    task_id: str
    device_id: str
    openings: tuple[ChunkOpening, ...]
    signature: str

    FIELDS: ClassVar[dict[str, Any]] = {
        "type": constant("opening"),
        "task_id": task_id_field,
        "device_id": device_id_field,
        "openings": array(ChunkOpening.validator(), 256, min_items=1),
        "signature": signature_field,
    }


PRIVACY_ACTIONS = ("export", "erase")


@dataclass(frozen=True, slots=True)
class Privacy(SignedMessage):
    """The device owner's request for an export or the erasure of the device's data.

    Signed by the device key and freshness-checked like a heartbeat. It carries no
    sequence number: an erasure is idempotent, and replaying an export within the
    freshness window only returns the same data to whoever could already ask for it.
    """

    TYPE: ClassVar[str] = "privacy"
    type: str
    device_id: str
    action: str
    timestamp: int
    signature: str

    FIELDS: ClassVar[dict[str, Any]] = {
        "type": constant("privacy"),
        "device_id": device_id_field,
        "action": text(16, "export|erase"),
        "timestamp": timestamp_field,
        "signature": signature_field,
    }


#: How a chunk may have no output (SPEC §3.1): a ``wasm`` kernel's fault codes.
CHUNK_FAULT_CODES = (
    "out_of_fuel",
    "memory_limit",
    "trap",
    "refused",
    "bad_output",
    "input_too_large",
)


@dataclass(frozen=True, slots=True)
class ChunkFaultReport(SignedMessage):
    """A device's word that a chunk of its assigned task has no output (SPEC §3.1).

    The coordinator believes it only after running that chunk itself: a chunk fault is
    the same on every machine, so a device cannot shed work by claiming one.
    """

    TYPE: ClassVar[str] = "chunk_fault"
    type: str
    task_id: str
    device_id: str
    chunk: int
    code: str
    timestamp: int
    signature: str

    FIELDS: ClassVar[dict[str, Any]] = {
        "type": constant("chunk_fault"),
        "task_id": task_id_field,
        "device_id": device_id_field,
        "chunk": integer(0, MAX_CHUNKS - 1),
        "code": text(32, "|".join(CHUNK_FAULT_CODES)),
        "timestamp": timestamp_field,
        "signature": signature_field,
    }


SIGNED_TYPES: dict[str, type[SignedMessage]] = {
    m.TYPE: m for m in (Enroll, PoA, Assignment, PoT, Challenge, Opening, Privacy, ChunkFaultReport)
}


def parse_signed(data: Any, expected: type[M]) -> M:
    """Parse a signed message, refusing one of another ``type`` with code ``wrong_type``.

    Cross-type confusion (a PoA replayed as a PoT) is refused before anything else is read.
    """
    if not isinstance(data, Mapping):
        raise ValidationError("$", "expected a JSON object")
    expected_type = expected.TYPE  # type: ignore[attr-defined]
    if data.get("type") != expected_type:
        raise ValidationError("type", f"expected {expected_type!r}", code="wrong_type")
    return parse(expected, data)
