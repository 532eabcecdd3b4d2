"""Kubernetes access shared by the operator, the worker and the CLI.

Resource classes for the agentrun kinds (lightkube generic resources), a client factory
(kubeconfig from ``KUBECONFIG`` or the in-cluster service account), and
:func:`transition`, the single way a run's phase is written to its custom resource: a
read-check-write loop that carries ``metadata.resourceVersion`` in the patch, so the API
server refuses it (409) if anyone wrote in between, and that never moves a phase backwards.
"""

from __future__ import annotations

from typing import Any

import lightkube
import lightkube.config.kubeconfig
import lightkube.core.exceptions
import lightkube.generic_resource
import lightkube.types

import agentrun
from agentrun import phases, timestamps

GROUP = "agentrun.io"
VERSION = "v1alpha1"

AgentRun = lightkube.generic_resource.create_namespaced_resource(GROUP, VERSION, "AgentRun", "agentruns")
WorkerPool = lightkube.generic_resource.create_namespaced_resource(GROUP, VERSION, "WorkerPool", "workerpools")
AgentWorkflow = lightkube.generic_resource.create_namespaced_resource(GROUP, VERSION, "AgentWorkflow", "agentworkflows")

ApiError = lightkube.core.exceptions.ApiError

_MAX_CONFLICT_RETRIES = 20


def client(
    kubeconfig: str | None = None,
    *,
    context: str | None = None,
    timeout: float = 10.0,
    user_agent: str = "agentrun",
) -> lightkube.AsyncClient:
    """An async client from ``kubeconfig`` (a path), else ``KUBECONFIG``/in-cluster config;
    ``context`` picks a kubeconfig context as ``kubectl --context`` does. ``user_agent``
    names the calling component (``agentrun-operator``, ``agentrun-worker``…) in the API
    server's audit log, as client-go programs do."""
    import httpx2  # lightkube's HTTP layer

    config = (
        lightkube.config.kubeconfig.KubeConfig.from_file(kubeconfig)
        if kubeconfig
        else lightkube.config.kubeconfig.KubeConfig.from_env()
    )
    single = config.get(context_name=context) if context else None
    api = lightkube.AsyncClient(config=single or config, timeout=httpx2.Timeout(timeout), field_manager="agentrun")
    # lightkube has no user-agent option; its httpx client is built eagerly and keeps headers.
    api._client._client.headers["User-Agent"] = f"{user_agent}/{agentrun.__version__}"
    return api


now = timestamps.now
now_precise = timestamps.now_precise


def to_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict) and not hasattr(obj, "to_dict"):
        return obj
    result: dict[str, Any] = obj.to_dict()
    return result


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and exc.status.code == 404


def is_conflict(exc: BaseException) -> bool:
    return isinstance(exc, ApiError) and exc.status.code == 409


def set_condition(
    conditions: list[dict[str, Any]],
    type_: str,
    status: str,
    *,
    reason: str,
    message: str = "",
    generation: int | None = None,
) -> list[dict[str, Any]]:
    """Return ``conditions`` with ``type_`` set; ``lastTransitionTime`` moves only on change."""
    result = [dict(c) for c in conditions if c.get("type") != type_]
    previous = next((c for c in conditions if c.get("type") == type_), None)
    changed = previous is None or previous.get("status") != status
    condition: dict[str, Any] = {
        "type": type_,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": now() if changed or previous is None else previous["lastTransitionTime"],
    }
    if generation is not None:
        condition["observedGeneration"] = generation
    result.append(condition)
    return result


async def transition(
    api: lightkube.AsyncClient,
    namespace: str,
    name: str,
    phase: phases.Phase,
    *,
    attempt: int,
    uid: str | None = None,
    fields: dict[str, Any] | None = None,
    condition: tuple[str, str, str, str] | None = None,
    seen: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Move an AgentRun to ``phase`` (at ``attempt``) if the lifecycle allows it.

    Returns the patched object, or None when the transition is not allowed (the run is
    already further along, terminal, or was replaced by another object of the same name).
    ``condition`` is ``(type, status, reason, message)``. Raises ApiError 404 when gone.
    ``seen`` is the object as the caller last saw it (a watch event's body): the first try
    patches against its ``resourceVersion`` without a GET, and a conflict falls back to GET.
    """
    for _ in range(_MAX_CONFLICT_RETRIES):
        if seen is not None and (seen.get("metadata") or {}).get("resourceVersion"):
            current, seen = seen, None
        else:
            current = to_dict(await api.get(AgentRun, name, namespace=namespace))
        meta = current.get("metadata", {})
        if uid is not None and meta.get("uid") != uid:
            return None
        status = current.get("status") or {}
        if not phases.may_transition(status.get("phase"), int(status.get("attempt") or 0), phase, attempt):
            return None
        new_status: dict[str, Any] = dict(fields or {})
        new_status["phase"] = str(phase)
        new_status["attempt"] = attempt
        if condition is not None:
            ctype, cstatus, creason, cmessage = condition
            new_status["conditions"] = set_condition(
                status.get("conditions") or [],
                ctype,
                cstatus,
                reason=creason,
                message=cmessage,
                generation=meta.get("generation"),
            )
        patch = {"metadata": {"resourceVersion": meta.get("resourceVersion")}, "status": new_status}
        try:
            patched = await api.patch(
                AgentRun.Status,
                name,
                patch,
                namespace=namespace,
                patch_type=lightkube.types.PatchType.MERGE,
            )
        except ApiError as exc:
            if is_conflict(exc):
                continue
            raise
        return to_dict(patched)
    raise RuntimeError(f"AgentRun {namespace}/{name}: too many write conflicts")


async def patch_status(
    api: lightkube.AsyncClient, namespace: str, name: str, status: dict[str, Any]
) -> dict[str, Any]:
    """A plain merge patch of status fields that do not decide the phase (heartbeat, counters)."""
    patched = await api.patch(
        AgentRun.Status,
        name,
        {"status": status},
        namespace=namespace,
        patch_type=lightkube.types.PatchType.MERGE,
    )
    return to_dict(patched)
