"""The objects a WorkerPool owns (its Deployment, HPA or ScaledObject), kept in line with it.

:func:`apply` creates the object if absent and patches it if the pool owns it; an object of
the same name the pool does not own is left alone and reported as a conflict. :func:`delete`
removes one only if the pool owns it. Both answer ``(reason, message)`` for the pool's
conditions. Owned objects go with the pool through Kubernetes' garbage collector.
"""

from __future__ import annotations

from typing import Any

import lightkube
import lightkube.codecs
import lightkube.types
import structlog

from agentrun import kube

logger = structlog.get_logger(__name__)


def is_owned(obj: dict[str, Any], owner_uid: str) -> bool:
    return any(o.get("uid") == owner_uid for o in (obj.get("metadata") or {}).get("ownerReferences") or [])


async def apply(api: lightkube.AsyncClient, resource: Any, manifest: dict[str, Any], owner_uid: str, *,
                what: str, spec: dict[str, Any] | None = None, **created: Any) -> tuple[str, str]:
    """Create ``manifest``, or merge-patch its labels and ``spec`` (default: the manifest's)
    into the object the owner has. ``what`` names the log events; ``created`` goes into the
    creation's log line."""
    meta = manifest["metadata"]
    name, namespace, kind = meta["name"], meta["namespace"], manifest["kind"]
    log = logger.bind(namespace=namespace, name=name, kind=kind)
    try:
        current = kube.to_dict(await api.get(resource, name, namespace=namespace))
    except kube.ApiError as exc:
        if not kube.is_not_found(exc):
            raise
        await api.create(lightkube.codecs.from_dict(manifest))
        log.info(f"pool.{what}_created", **created)
        return f"{kind}Created", f"{kind} {name} created"
    if not is_owned(current, owner_uid):
        log.warning(f"pool.{what}_conflict")
        return f"{kind}Conflict", f"{kind} {name} exists and is not owned by this WorkerPool"
    body = {"metadata": {"labels": meta["labels"]}, "spec": manifest["spec"] if spec is None else spec}
    await api.patch(resource, name, body, namespace=namespace, patch_type=lightkube.types.PatchType.MERGE)
    log.info(f"pool.{what}_updated")
    return f"{kind}Updated", f"{kind} {name} up to date"


async def delete(api: lightkube.AsyncClient, resource: Any, name: str, namespace: str, owner_uid: str, *,
                 what: str) -> None:
    """Delete the object if the owner has it; an absent API or object is nothing to do."""
    try:
        current = kube.to_dict(await api.get(resource, name, namespace=namespace))
    except kube.ApiError as exc:
        if kube.is_not_found(exc):
            return
        raise
    if is_owned(current, owner_uid):
        await api.delete(resource, name, namespace=namespace)
        logger.info(f"pool.{what}_deleted", namespace=namespace, name=name, kind=current.get("kind"))
