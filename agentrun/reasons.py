"""Why a run is where it is: the ``status.reason`` values, Event reasons and stream reasons.

One enum for the operator, the worker, the gateway and the CLI. It is a ``StrEnum``, so a
member is written to the resource, the database, the stream and Events as exactly the text it
always was (``Reason.WORKER_LOST == "WorkerLost"``), and readers that compare strings keep
working. A reason is CamelCase, as Kubernetes condition reasons are.
"""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    # -- how a run ends well (Succeeded) -----------------------------------------------------
    COMPLETED = "Completed"
    """The agent called ``complete`` (or replied without tool calls)."""
    ASKED_USER = "AskedUser"
    """The agent called ``ask``: the answer comes as a new run on the same thread."""
    MAX_ITERATIONS_REACHED = "MaxIterationsReached"
    """The loop reached ``maxIterations``; the last turn's text is the result."""

    # -- how a run is stopped (Stopped) --------------------------------------------------------
    STOP_REQUESTED = "StopRequested"
    """``spec.stop: true`` (``agentrun stop``, the gateway, ``kubectl patch``)."""
    RUN_DELETED = "RunDeleted"
    """Its AgentRun was deleted while the run lived."""
    INTERRUPTED = "Interrupted"
    """A new run on the same thread interrupted it (``multitaskStrategy: interrupt``)."""

    # -- why a run failed (Failed) ---------------------------------------------------------
    AGENT_ERROR = "AgentError"
    """An exception without a reason of its own escaped the agent loop."""
    BUDGET_EXCEEDED = "BudgetExceeded"
    MODEL_ERROR = "ModelError"
    PROVIDER_UNAVAILABLE = "ProviderUnavailable"
    TOOL_NOT_FOUND = "ToolNotFound"
    MCP_SERVER_UNAVAILABLE = "MCPServerUnavailable"
    INPUT_NOT_FOUND = "InputNotFound"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    THREAD_BUSY = "ThreadBusy"
    """Its thread is busy (``multitaskStrategy: reject``); also the ``waiting`` stream event's."""
    STEP_FAILED = "StepFailed"
    WORKFLOW_NOT_FOUND = "WorkflowNotFound"
    WORKFLOW_INVALID = "WorkflowInvalid"
    WORKER_POOL_NOT_FOUND = "WorkerPoolNotFound"
    POOL_DELETED = "PoolDeleted"
    WORKER_LOST = "WorkerLost"
    """Its worker stopped renewing the lease: re-queued as a new attempt, or failed on the last."""

    # -- what happens on the way (conditions, Events, non-terminal stream events) --------------
    WAITING_FOR_WORKER_POOL = "WaitingForWorkerPool"
    """A new run names a WorkerPool not created yet: Pending while dispatch waits for it."""
    WAITING_FOR_WORKFLOW = "WaitingForWorkflow"
    """A new run names an AgentWorkflow not created yet: Pending while dispatch waits for it."""
    QUEUED = "Queued"
    REQUEUED = "Requeued"
    STARTED = "Started"
    REPUBLISHED = "Republished"
    """A ``Queued`` run nobody took had its message published again."""
    MESSAGE_LOST = "MessageLost"
    """Why it was (the recoveries metric's reason): its message was presumably lost."""
    WORKER_SHUTDOWN = "WorkerShutdown"
    """The worker shut down and handed the run back (the ``requeued`` stream event)."""


STOP_REASONS: frozenset[Reason] = frozenset({Reason.STOP_REQUESTED, Reason.RUN_DELETED, Reason.INTERRUPTED})


def of(error: BaseException, default: Reason = Reason.AGENT_ERROR) -> str:
    """The reason an exception names (its ``reason`` attribute), else ``default``."""
    return str(getattr(error, "reason", default))
