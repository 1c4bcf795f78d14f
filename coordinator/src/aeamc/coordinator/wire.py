"""Compiled decoders for the signed bodies devices send most: heartbeats and proofs.

The protocol's parser (``aeamc.shared.strictjson`` then ``aeamc.shared.messages``) builds
Python objects from the JSON, checks for members given twice, then walks the validators
of each model. These decoders do the same checks in one pass of msgspec's C decoder, into
the same models, for a body that is valid — and for any other body they answer ``None``,
and the route parses it the usual way, which refuses it with the message it always gave.
So they must never take a body the protocol's parser refuses; what they take, they must
turn into exactly the model that parser builds:

* every member has its exact JSON type (an integer is never ``1.0``, a boolean never
  ``1``), range, length and pattern, as in the model's ``FIELDS``; unknown and missing
  members, ``NaN``, malformed bytes and numbers beyond the range are refused by msgspec;
* a member given twice, which msgspec would take (the last), is found by counting
  quotes: every string in a valid body is a member name or a value whose pattern has no
  ``"``, so a body holds exactly twice as many quotes as the strings the model has, and
  any member more adds its name's two.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from aeamc.shared.canonical import MAX_SAFE_INT
from aeamc.shared.messages import (
    MAX_CHUNKS,
    MAX_WORK_REPORTS,
    TASK_ID_PATTERN,
    ExecutionMetadata,
    PoA,
    PoT,
    Telemetry,
    WorkReport,
)

from .ingestion import MAX_PROOF_BATCH, MAX_PROOF_OUTPUT


def _hex(nbytes: int) -> msgspec.Meta:
    return msgspec.Meta(pattern=rf"\A[0-9a-f]{{{2 * nbytes}}}\Z")


_TASK_ID = msgspec.Meta(min_length=1, max_length=64, pattern=rf"\A(?:{TASK_ID_PATTERN})\Z")
Timestamp = Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INT)]
TaskId = Annotated[str, _TASK_ID]
DeviceId = Annotated[str, _hex(16)]
Nonce = Annotated[str, _hex(16)]
Digest = Annotated[str, _hex(32)]
Signature = Annotated[str, _hex(64)]
Chunks = Annotated[int, msgspec.Meta(ge=1, le=MAX_CHUNKS)]
#: Lowercase hex of at most MAX_PROOF_OUTPUT bytes (its even length is checked after).
Output = Annotated[str, msgspec.Meta(max_length=2 * MAX_PROOF_OUTPUT, pattern=r"\A[0-9a-f]*\Z")]


class _Telemetry(msgspec.Struct, forbid_unknown_fields=True):
    # Nullable, never optional: each member must be there (Telemetry.FIELDS).
    battery_pct: Annotated[int, msgspec.Meta(ge=0, le=100)] | None
    charging: bool | None
    cpu_temp_mc: Annotated[int, msgspec.Meta(ge=-60_000, le=200_000)] | None
    cpu_load_permille: Annotated[int, msgspec.Meta(ge=0, le=1000)] | None
    net_latency_us: Annotated[int, msgspec.Meta(ge=0, le=3_600_000_000)] | None
    mem_available_kb: Annotated[int, msgspec.Meta(ge=0, le=1 << 50)] | None


class _Work(msgspec.Struct, forbid_unknown_fields=True):
    task_id: TaskId
    chunks_done: Annotated[int, msgspec.Meta(ge=0, le=MAX_CHUNKS)]


class _PoA(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["poa"]
    device_id: DeviceId
    timestamp: Timestamp
    seq: Annotated[int, msgspec.Meta(ge=0, le=MAX_SAFE_INT)]
    telemetry: _Telemetry
    signature: Signature
    # Optional, never null: absent is UNSET (PoA.FIELDS: optional(array(..., min_items=1))).
    work: (
        Annotated[list[_Work], msgspec.Meta(min_length=1, max_length=MAX_WORK_REPORTS)]
        | msgspec.UnsetType
    ) = msgspec.UNSET


class _Metadata(msgspec.Struct, forbid_unknown_fields=True):
    execution_time_ms: Timestamp
    cpu_time_ms: Timestamp
    chunks: Chunks


class _PoT(msgspec.Struct, forbid_unknown_fields=True):
    type: Literal["pot"]
    task_id: TaskId
    device_id: DeviceId
    timestamp: Timestamp
    output_digest: Digest
    trace_root: Digest
    device_nonce: Nonce
    checkpoint: Digest
    execution_metadata: _Metadata
    signature: Signature


class _Submission(msgspec.Struct, forbid_unknown_fields=True):
    pot: _PoT
    output: Output


class _Batch(msgspec.Struct, forbid_unknown_fields=True):
    proofs: Annotated[list[_Submission], msgspec.Meta(min_length=1, max_length=MAX_PROOF_BATCH)]


#: Strings (member names and string values) of a PoA without ``work``: 6 + 6 members,
#: ``type``, ``device_id`` and ``signature``; ``work`` adds its name, and each report its
#: 2 names and its task id.
_POA_STRINGS = 15
_WORK_STRINGS = 3
#: A submission (2 names), its PoT (10 names, 8 string values) and metadata (3 names),
#: and the output (a string value).
_SUBMISSION_STRINGS = 2 + 10 + 8 + 3 + 1


def _poa(w: _PoA) -> PoA:
    t = w.telemetry
    work = (
        None
        if w.work is msgspec.UNSET
        else tuple(WorkReport(r.task_id, r.chunks_done) for r in w.work)
    )
    return PoA(
        type=w.type,
        device_id=w.device_id,
        timestamp=w.timestamp,
        seq=w.seq,
        telemetry=Telemetry(
            t.battery_pct,
            t.charging,
            t.cpu_temp_mc,
            t.cpu_load_permille,
            t.net_latency_us,
            t.mem_available_kb,
        ),
        signature=w.signature,
        work=work,
    )


_POA_DECODER = msgspec.json.Decoder(_PoA)


def decode_poa(raw: bytes) -> PoA | None:
    """``raw`` as the PoA the protocol's parser would make of it, or ``None`` when that
    parser may refuse it (then it must be asked, for its answer)."""
    try:
        w = _POA_DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    strings = _POA_STRINGS
    if w.work is not msgspec.UNSET:
        strings += 1 + _WORK_STRINGS * len(w.work)
    if raw.count(b'"') != 2 * strings:
        return None  # a member twice (or a body this check cannot vouch for)
    return _poa(w)


class ParsedSubmission(dict[str, Any]):
    """A proof submission a compiled decoder has already parsed: its members (``output``
    as sent), and ``pot``, the PoT the protocol's parser makes of it."""

    __slots__ = ("pot",)

    def __init__(self, pot: PoT, output: str) -> None:
        super().__init__(pot=pot, output=output)
        self.pot = pot


def _pot(w: _PoT) -> PoT:
    m = w.execution_metadata
    return PoT(
        type=w.type,
        task_id=w.task_id,
        device_id=w.device_id,
        timestamp=w.timestamp,
        output_digest=w.output_digest,
        trace_root=w.trace_root,
        device_nonce=w.device_nonce,
        checkpoint=w.checkpoint,
        execution_metadata=ExecutionMetadata(m.execution_time_ms, m.cpu_time_ms, m.chunks),
        signature=w.signature,
    )


_SUBMISSION_DECODER = msgspec.json.Decoder(_Submission)
_BATCH_DECODER = msgspec.json.Decoder(_Batch)
#: The most objects a batch holds (each submission: itself, its PoT, its metadata).
_BATCH_OBJECTS = 1 + 3 * MAX_PROOF_BATCH


def decode_submission(raw: bytes) -> ParsedSubmission | None:
    """``raw`` as one proof submission ``{"pot", "output"}``, or ``None`` when the
    protocol's parser must judge it."""
    try:
        w = _SUBMISSION_DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if len(w.output) % 2 or raw.count(b'"') != 2 * _SUBMISSION_STRINGS:
        return None
    return ParsedSubmission(_pot(w.pot), w.output)


def decode_batch(raw: bytes) -> list[ParsedSubmission] | None:
    """``raw`` as a batch ``{"proofs": [1..MAX_PROOF_BATCH submissions]}``, or ``None``."""
    if raw.count(b"{") > _BATCH_OBJECTS:
        return None  # never decode more objects than a batch can hold
    try:
        w = _BATCH_DECODER.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    if any(len(s.output) % 2 for s in w.proofs):
        return None
    if raw.count(b'"') != 2 * (1 + _SUBMISSION_STRINGS * len(w.proofs)):
        return None
    return [ParsedSubmission(_pot(s.pot), s.output) for s in w.proofs]
