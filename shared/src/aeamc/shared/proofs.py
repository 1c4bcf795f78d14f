"""Proof-of-Task commitments, their verification, and spot-check openings (SPEC §2).

The device commits to every chunk output through ``trace_root`` before it can know which
chunks will be challenged; the coordinator later re-executes a few of them. Everything
here is pure: time (``now_ms``), randomness (``nonce``) and the measured execution times
come from the caller.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import merkle
from .errors import ChunkFault, ProofError
from .identity import Signer
from .messages import (
    Assignment,
    Challenge,
    ChunkOpening,
    Opening,
    PoT,
    check_fresh,
    sign,
)
from .tasks.base import TaskKind

PASSED, FAILED, UNANSWERED = "passed", "failed", "unanswered"
DEFAULT_POT_WINDOW_MS = 300_000


def chunk_digest(index: int, output: bytes) -> bytes:
    return hashlib.sha256(struct.pack("<I", index) + output).digest()


def checkpoint(task_id: str, nonce: bytes, trace_root: bytes) -> bytes:
    """The seed's ``C = H(task_id || nonce || partial_trace)``."""
    return hashlib.sha256(task_id.encode() + nonce + trace_root).digest()


def encode_output(outputs: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(o)) + o for o in outputs)


def split_output(output: bytes, chunks: int) -> list[bytes]:
    """Inverse of ``encode_output``; refuses anything but exactly ``chunks`` pieces."""
    pieces: list[bytes] = []
    pos, end = 0, len(output)
    while pos < end:
        if pos + 4 > end:
            raise ProofError(f"output truncated in the length of chunk {len(pieces)}")
        (length,) = struct.unpack_from("<I", output, pos)
        pos += 4
        if pos + length > end:
            raise ProofError(f"output truncated in chunk {len(pieces)}")
        pieces.append(output[pos : pos + length])
        pos += length
        if len(pieces) > chunks:
            break
    if len(pieces) != chunks:
        raise ProofError(f"output holds {len(pieces)} chunks, the task has {chunks}")
    return pieces


@dataclass(frozen=True)
class Trace:
    """Everything a device keeps about one task to prove it and answer spot-checks."""

    outputs: tuple[bytes, ...]

    @property
    def digests(self) -> list[bytes]:
        return [chunk_digest(i, o) for i, o in enumerate(self.outputs)]

    @property
    def root(self) -> bytes:
        return merkle.root(self.digests)

    @property
    def output(self) -> bytes:
        return encode_output(self.outputs)

    @property
    def output_digest(self) -> bytes:
        return hashlib.sha256(self.output).digest()

    def opening(self, index: int) -> ChunkOpening:
        path = merkle.audit_path(self.digests, index)
        return ChunkOpening(index, self.outputs[index].hex(), tuple(p.hex() for p in path))


def run_task(kind: TaskKind, params: Mapping[str, Any], chunks: int) -> Trace:
    """Run every chunk in order (the agent runs chunks one by one to stay interruptible)."""
    return Trace(tuple(kind.run_chunk(params, i, chunks) for i in range(chunks)))


def build_pot(
    signer: Signer,
    *,
    task_id: str,
    device_id: str,
    trace: Trace,
    nonce: bytes,
    timestamp: int,
    execution_time_ms: int,
    cpu_time_ms: int,
) -> PoT:
    if len(nonce) != 16:
        raise ValueError("device_nonce is 16 random bytes")
    root = trace.root
    body = {
        "type": "pot",
        "task_id": task_id,
        "device_id": device_id,
        "timestamp": timestamp,
        "output_digest": trace.output_digest.hex(),
        "trace_root": root.hex(),
        "device_nonce": nonce.hex(),
        "checkpoint": checkpoint(task_id, nonce, root).hex(),
        "execution_metadata": {
            "execution_time_ms": execution_time_ms,
            "cpu_time_ms": cpu_time_ms,
            "chunks": len(trace.outputs),
        },
    }
    return sign(PoT, body, signer)


def verify_pot(
    pot: PoT,
    output: bytes,
    *,
    public_key: bytes,
    assignment: Assignment,
    now_ms: int,
    window_ms: int = DEFAULT_POT_WINDOW_MS,
    signature_checked: bool = False,
) -> list[bytes]:
    """Verify a PoT and its output bytes against the assignment; return the chunk outputs.

    Order matters for the error a device sees: identity and signature first (a forged
    message learns nothing else), then freshness, then the commitments. A caller that
    already checked identity and signature (before looking up the assignment) says so
    with ``signature_checked`` rather than paying for the signature twice.
    """
    if not signature_checked:
        pot.verify(public_key, signer_id=pot.device_id)
    check_fresh(pot.timestamp, now_ms, window_ms)
    if pot.task_id != assignment.task_id or pot.device_id != assignment.device_id:
        raise ProofError("the PoT is not for this assignment")
    if pot.execution_metadata.chunks != assignment.chunks:
        raise ProofError(
            f"PoT reports {pot.execution_metadata.chunks} chunks, the task has {assignment.chunks}"
        )
    if hashlib.sha256(output).hexdigest() != pot.output_digest:
        raise ProofError("output does not match output_digest")
    outputs = split_output(output, assignment.chunks)
    root = Trace(tuple(outputs)).root
    if root.hex() != pot.trace_root:
        raise ProofError("chunk outputs do not match trace_root")
    expected = checkpoint(pot.task_id, bytes.fromhex(pot.device_nonce), root)
    if expected.hex() != pot.checkpoint:
        raise ProofError("checkpoint does not match task_id, nonce and trace root")
    return outputs


def build_opening(signer: Signer, challenge: Challenge, trace: Trace) -> Opening:
    """Answer a challenge from the kept trace."""
    openings = [trace.opening(i).to_dict() for i in challenge.indices]
    body = {
        "type": "opening",
        "task_id": challenge.task_id,
        "device_id": challenge.device_id,
        "openings": openings,
    }
    return sign(Opening, body, signer)


@dataclass(frozen=True)
class SpotCheckResult:
    verdict: str
    detail: str
    reexecuted_chunks: int = 0


def verify_opening(
    opening: Opening,
    *,
    challenge: Challenge,
    pot: PoT,
    outputs: Sequence[bytes],
    kind: TaskKind,
    params: Mapping[str, Any],
    public_key: bytes,
) -> SpotCheckResult:
    """Judge an opening: signature, the indices asked, paths, stored bytes, re-execution.

    A bad signature or an answer for another task is not a verdict on the device's work
    (anyone can send garbage), so it raises; everything about the work itself is a verdict.
    """
    opening.verify(public_key, signer_id=challenge.device_id)
    if (opening.task_id, opening.device_id) != (challenge.task_id, challenge.device_id):
        raise ProofError("the opening answers another challenge")
    chunks = pot.execution_metadata.chunks
    asked = list(challenge.indices)
    given = [o.index for o in opening.openings]
    if given != asked:
        return SpotCheckResult(FAILED, f"opened chunks {given}, challenged {asked}")
    root = bytes.fromhex(pot.trace_root)
    done = 0
    for o in opening.openings:
        out = bytes.fromhex(o.output)
        try:
            merkle.verify_path(
                chunk_digest(o.index, out),
                o.index,
                chunks,
                [bytes.fromhex(p) for p in o.path],
                root,
            )
        except ProofError as exc:
            return SpotCheckResult(FAILED, f"chunk {o.index}: {exc}", done)
        if o.index >= len(outputs) or outputs[o.index] != out:
            return SpotCheckResult(FAILED, f"chunk {o.index}: differs from the stored output", done)
        try:
            recomputed = kind.run_chunk(params, o.index, chunks)
        except ChunkFault as exc:
            return SpotCheckResult(FAILED, f"chunk {o.index}: has no output ({exc})", done + 1)
        done += 1
        if recomputed != out:
            return SpotCheckResult(FAILED, f"chunk {o.index}: re-execution gives other bytes", done)
    return SpotCheckResult(PASSED, f"{done} chunks re-executed and matched", done)


def reexecute_chunks(
    outputs: Sequence[bytes],
    *,
    indices: Sequence[int],
    kind: TaskKind,
    params: Mapping[str, Any],
    chunks: int,
) -> SpotCheckResult:
    """Judge stored chunk outputs by running those chunks again, without the device.

    For a dispute between replicas: the coordinator needs no answer from anyone, so a
    replica that declines or goes silent cannot keep its task from ending.
    """
    done = 0
    for i in indices:
        if not 0 <= i < chunks or i >= len(outputs):
            return SpotCheckResult(FAILED, f"chunk {i}: not in the output", done)
        try:
            recomputed = kind.run_chunk(params, i, chunks)
        except ChunkFault as exc:
            return SpotCheckResult(FAILED, f"chunk {i}: has no output ({exc})", done + 1)
        done += 1
        if recomputed != outputs[i]:
            return SpotCheckResult(
                FAILED, f"chunk {i}: the coordinator's re-execution gives other bytes", done
            )
    return SpotCheckResult(PASSED, f"{done} differing chunks re-executed by the coordinator", done)
