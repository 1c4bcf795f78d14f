"""Whether the agent takes a new assignment, and queuing it durably when it does.

An assignment the coordinator sends (``POST /v1/assignments``) is checked cheapest first:
the agent shutting down, the assignment's expiry, the task kind, its parameters; then a
retry of work already taken is answered with that work's state (the coordinator retries
when an answer is lost); only then does the device's condition decide
(``refusal_reason``). An accepted assignment is in the durable queue before the
coordinator hears 202, so a crash cannot lose accepted work.

Each refusal is a ``Refused`` (409 with a machine ``reason``) and is counted under that
reason in the agent's metrics; a malformed assignment is a 400 ``ApiError``. Neither
changes anything.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from aeamc.shared.errors import ProtocolError

from .server import ApiError, Refused
from .view import AgentView

if TYPE_CHECKING:
    from aeamc.shared.messages import Assignment
    from aeamc.shared.tasks.registry import KindRegistry

log = logging.getLogger(__name__)

#: What each refusal reason tells the coordinator, in words.
REFUSAL_TEXT = {
    "shutting_down": "the agent is shutting down",
    "quarantined": "the coordinator quarantined this device",
    "outbox_full": "undelivered proofs fill the outbox",
    "busy": "the work queue is full",
    "too_hot": "the CPU is too hot",
    "battery_low": "the battery is low and not charging",
    "not_charging": "configured to work only while charging",
}
#: Refusals that depend on the assignment alone (its message says what it asked for).
TASK_REFUSALS = ("expired", "unknown_kind", "outside_policy")


class Admitting(AgentView, Protocol):
    """The running agent as admission sees it: its parts, the task kinds it can run,
    and how to say that its state changed."""

    registry: KindRegistry

    def status_changed(self) -> None: ...


def refusal_reason(agent: AgentView) -> str | None:
    """Why a new assignment would be refused right now (before looking at it)."""
    if agent.shutting_down:
        return "shutting_down"
    if agent.link is not None and not agent.link.accepting_work:
        return "quarantined"
    if agent.monitor.reason is not None:
        # The device's condition first: it outlasts the current task.
        return agent.monitor.reason
    if not agent.outbox.has_room():
        return "outbox_full"
    if agent.queue.count >= agent.config.max_queued_tasks:
        return "busy"
    return None


def outside_policy(agent: AgentView, a: Assignment) -> str | None:
    """What in ``a`` this device's owner does not allow (``[work] clients``, the ``[wasm]``
    limits), or None.

    Checked before the device's condition: it depends on the task alone, so the same
    task is refused the same way every time. The coordinator places tasks by these limits
    too (they are in the device's capabilities); checking them here as well means a
    coordinator that ignores them still gets nothing run outside them."""
    c = agent.config
    if c.accept_clients and a.client not in c.accept_clients:
        who = f"client {a.client}" if a.client else "a task without a client id"
        return f"this device takes work only from its owner's chosen clients, not {who}"
    if a.kind != "wasm":
        return None
    if a.params["memory_mb"] > c.wasm_max_memory_mb:
        return (
            f"the task asks for {a.params['memory_mb']} MiB of memory per chunk; "
            f"this device allows {c.wasm_max_memory_mb}"
        )
    if a.params["fuel"] > c.wasm_max_fuel:
        return (
            f"the task asks for {a.params['fuel']} fuel per chunk; "
            f"this device allows {c.wasm_max_fuel}"
        )
    return None


def admit(agent: Admitting, a: Assignment) -> str:
    """Queue ``a`` durably or raise ``Refused``/``ApiError``; the state to report
    (``running``, ``queued`` or ``done``). A refusal is counted under its reason."""
    try:
        return _admit(agent, a)
    except Refused as exc:
        agent.metrics.refusals[exc.extra["reason"]] += 1
        raise


def _admit(agent: Admitting, a: Assignment) -> str:
    if agent.shutting_down:
        raise Refused("shutting_down", "the agent is shutting down")
    if a.expires_at <= agent.clock_ms():
        raise Refused("expired", "the assignment has expired")
    if a.kind not in agent.registry:
        raise Refused("unknown_kind", f"this agent cannot run {a.kind!r}")
    try:
        agent.registry.validate(a.kind, a.params, a.chunks)
    except ProtocolError as exc:
        raise ApiError(400, exc.code, exc.message) from None
    except (ImportError, TypeError, AttributeError) as exc:  # a broken plug-in
        log.error("task kind %s cannot be loaded: %s", a.kind, exc)
        raise Refused("unknown_kind", f"task kind {a.kind!r} cannot be loaded") from None
    outside = outside_policy(agent, a)
    if outside is not None:
        raise Refused("outside_policy", outside)
    runner = agent.runner
    assert runner is not None
    current = runner.current
    if current is not None and current.assignment == a:
        return "running"  # the coordinator retried a request we already took
    if agent.queue.find(a) is not None:
        return "queued"
    if agent.traces.assignment(a.task_id) == a:
        return "done"  # already run; its proof is delivered or in the outbox
    runner.sweep()  # expired entries must not hold places in the queue
    reason = refusal_reason(agent)
    if reason is not None:
        raise Refused(reason, REFUSAL_TEXT.get(reason, reason))
    idle = current is None and agent.queue.count == 0
    # Durable before the coordinator hears 202: a crash cannot lose accepted work.
    agent.queue.add(a, agent.clock_ms())
    log.info("task %s accepted (%d in the queue)", a.task_id, agent.queue.count)
    runner.wake()
    agent.status_changed()
    return "running" if idle else "queued"
