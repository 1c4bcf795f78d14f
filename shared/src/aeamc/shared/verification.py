"""What a client may rely on: a delivered result's verification state (docs/verification.md).

Pure functions over facts the coordinator stores about each proof of a task. A result is
``verified`` only on positive evidence that nothing contradicts:

- a passed spot-check (the device opened the challenged chunks and re-execution agreed),
- the coordinator's own re-execution of the chunks on which disputing replicas differ,
- replicas from different devices that agree on every byte, or
- the assurance policy: the receipt is in a microblock and the device's check rate, set
  to catch a device faking ``catch_fraction`` of its chunks within its first tasks with
  the configured probability, did not draw it.

It is ``unverified`` while any check of a proof that delivered it is pending (or its
receipt is not in a block yet, so the draw has not happened), and ``void`` once a proof
behind it lost its credit (a failed or unanswered check, or its device quarantined or
erased first): a void result is withdrawn and its task runs again on other devices.
Nothing is ever ``verified`` while a check on it is pending, unanswered or failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

VERIFIED, UNVERIFIED, VOID = "verified", "unverified", "void"
#: How a verified result was established, strongest first.
BY_REEXECUTION, BY_SPOT_CHECK, BY_REPLICAS, BY_POLICY = (
    "re-execution",
    "spot-check",
    "replicas",
    "assurance-policy",
)


@dataclass(frozen=True)
class ProofFacts:
    """What the coordinator knows of one accepted proof."""

    output_digest: str
    #: The proof's credit: ``unverified``, ``verified`` (a check passed) or ``void``.
    credit: str
    #: Its spot-check's state (``pending``, ``passed``, ``failed``, ``unanswered``), or
    #: ``None`` when none was drawn (or none yet: see ``in_block``).
    check: str | None
    #: Whether its receipt is in a microblock (so its check was drawn or not).
    in_block: bool
    #: Whether its check re-executed the chunks where disputing replicas differ.
    dispute: bool = False


@dataclass(frozen=True)
class Verification:
    state: str | None
    by: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"state": self.state, "by": self.by}


def proof_verification(p: ProofFacts) -> Verification:
    """The verification state of one proof on its own."""
    if p.credit == VOID or p.check in ("failed", "unanswered"):
        return Verification(VOID)
    if p.check == "pending":
        return Verification(UNVERIFIED)
    if p.check == "passed" or p.credit == VERIFIED:
        return Verification(VERIFIED, BY_REEXECUTION if p.dispute else BY_SPOT_CHECK)
    if p.in_block:
        return Verification(VERIFIED, BY_POLICY)
    return Verification(UNVERIFIED)


def task_verification(
    task_state: str, output_digest: str | None, proofs: Sequence[ProofFacts]
) -> Verification:
    """The verification state of a task's result.

    A completed task's result is verified only when every live proof that delivered it is;
    ``state`` is ``None`` while the task has no result and none was ever withdrawn.
    """
    if task_state != "completed" or output_digest is None:
        withdrawn = any(proof_verification(p).state == VOID for p in proofs)
        return Verification(VOID if withdrawn else None)
    behind = [p for p in proofs if p.output_digest == output_digest and p.credit != VOID]
    if not behind:
        return Verification(UNVERIFIED)
    states = [proof_verification(p) for p in behind]
    if any(v.state != VERIFIED for v in states):
        return Verification(UNVERIFIED)
    ways = {v.by for v in states}
    for way in (BY_REEXECUTION, BY_SPOT_CHECK):
        if way in ways:
            return Verification(VERIFIED, way)
    devices = len(behind)
    return Verification(VERIFIED, BY_REPLICAS if devices > 1 else BY_POLICY)
