"""Resolving an AgentRun's ``workflowRef``: the AgentWorkflow goes into the broker message.

Called by ``dispatching`` before a run is queued and by ``scanning`` before a run's message
is published again. The worker never reads AgentWorkflows: the message carries what it needs
(``spec.workflow``: the workflow's name, uid, generation and spec; a workflow holds no
secrets), so a run executes the workflow as it was when its message was published, and the
workers need no RBAC on workflows.

What only the operator can check about a workflow — that it exists, and that its prompts
refer only to steps it has (in the deterministic executor, to earlier steps) — fails the
run at dispatch with ``WorkflowNotFound`` or ``WorkflowInvalid``.
"""

from __future__ import annotations

from typing import Any

import lightkube
import structlog

from agentrun import kube, reasons, templates

logger = structlog.get_logger(__name__)

RESOLVED = "workflow"
"""The key of the resolved workflow in the message's spec."""


class WorkflowMissing(Exception):
    """The run names an AgentWorkflow that does not exist (yet)."""

    reason = reasons.Reason.WORKFLOW_NOT_FOUND


class WorkflowInvalid(Exception):
    """The AgentWorkflow exists but a step's prompt refers to a step it cannot use."""

    reason = reasons.Reason.WORKFLOW_INVALID


async def resolve(api: lightkube.AsyncClient, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with its ``workflowRef`` resolved into ``spec["workflow"]``; unchanged without one."""
    ref = spec.get("workflowRef")
    if not ref:
        return spec
    name = str(ref["name"])
    try:
        obj = kube.to_dict(await api.get(kube.AgentWorkflow, name, namespace=namespace))
    except kube.ApiError as exc:
        if kube.is_not_found(exc):
            raise WorkflowMissing(f'AgentWorkflow "{name}" not found in namespace "{namespace}"') from None
        raise
    workflow_spec = obj.get("spec") or {}
    problems = templates.check_workflow(workflow_spec)
    if problems:
        raise WorkflowInvalid(f'AgentWorkflow "{name}": ' + "; ".join(problems))
    meta = obj.get("metadata") or {}
    resolved = {"name": name, "uid": meta.get("uid"), "generation": meta.get("generation"), **workflow_spec}
    return {**spec, RESOLVED: resolved}


async def resolve_for_republish(api: lightkube.AsyncClient, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Like :func:`resolve`, for a run that was dispatched already: never raises for the workflow.

    A workflow deleted (or broken) since the run was dispatched leaves the spec unresolved;
    the worker then ends the run ``Failed``/``WorkflowNotFound`` itself, so the re-queue path
    needs no failure handling of its own.
    """
    try:
        return await resolve(api, namespace, spec)
    except (WorkflowMissing, WorkflowInvalid) as exc:
        logger.warning("run.workflow_unresolved", namespace=namespace, reason=exc.reason, error=str(exc))
        return spec
