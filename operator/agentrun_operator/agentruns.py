"""AgentRun handlers: dispatch new runs, forward stop requests, index live runs.

The ``run_views`` index feeds the recovery scan (:mod:`agentrun_operator.scanning`);
``run_phases`` and the event handler feed the metrics (:mod:`agentrun_operator.metrics`).

Handlers stay small: they read the body, call a service module and let kopf record progress.
"""

from __future__ import annotations

from typing import Any

import kopf
import structlog

from agentrun import control, phases, reasons, views
from agentrun import settings as agentrun_settings
from agentrun_operator import decisions, dispatching, eventing, memos, metrics

logger = structlog.get_logger(__name__)

RESOURCE = ("agentrun.io", "v1alpha1", "agentruns")


@kopf.index(*RESOURCE)
def run_views(*, body: kopf.Body, **_: Any) -> dict[str, decisions.RunView]:
    """Every non-terminal run by uid, kept current from the watch stream for the scan.

    Nothing to index is ``{}``, not None: kopf keeps an object's previous entries when an
    indexer returns None, so a finished run would stay ``Running`` in the index for good.
    """
    found = decisions.view(views.AgentRun(body))
    return {} if found is None else {found.uid: found}


@kopf.index(*RESOURCE)
def run_pods(*, body: kopf.Body, uid: str | None, **_: Any) -> dict[tuple[str, str], str]:
    """Every live run by ``(namespace, pod)`` of its worker, for the pods' deletion cost."""
    run = views.AgentRun(body)
    host = agentrun_settings.instance_host(run.status.worker_instance)
    live = phases.is_active(run.status.phase)
    if not live or host is None or uid is None or body.metadata.namespace is None:
        return {}
    return {(body.metadata.namespace, host): uid}


@kopf.index(*RESOURCE)
def run_phases(*, body: kopf.Body, uid: str | None, **_: Any) -> dict[tuple[str, str, str], str]:
    """Every run by ``(namespace, pool, phase)``: the gauges of ``/metrics`` are its sizes."""
    key = metrics.phase_key(body)
    return {} if key is None or uid is None else {key: uid}


@kopf.on.event(*RESOURCE)
async def observe_run(*, type: str | None, body: kopf.Body, memo: Any, **_: Any) -> None:  # noqa: A002
    """Count finished runs and dispatch latency, post an Event for each phase change a worker
    made, and stop a live run that was deleted.

    Event handlers store nothing on the object and add no finalizer, so deleting an AgentRun
    never waits for the operator. A run deleted while it lives gets a stop request (its worker
    ends it ``Stopped``/``RunDeleted`` in the database and on the stream); should the operator
    miss the deletion, the worker notices it itself at its next heartbeat.
    """
    change = metrics.TRACKER.observe(type, body)
    if change is not None:
        event = eventing.phase_event(body, *change)
        if event is not None:
            (kopf.warn if event[0] == "Warning" else kopf.info)(body, reason=event[1], message=event[2])
    state = memos.find(memo)
    if state is not None and state.autoscaler is not None:
        state.autoscaler.nudge()
    if type == "DELETED":
        await stop_deleted_run(body, memo)


async def stop_deleted_run(body: kopf.Body, memo: Any) -> None:
    phase = views.AgentRun(body).status.phase
    uid = body.metadata.uid
    state = memos.of(memo)
    if uid is None or not phase or phases.is_terminal(phase) or state.redis is None:
        return
    await control.request_stop(state.redis, uid, ttl_seconds=state.config.key_ttl_seconds,
                               reason=reasons.Reason.RUN_DELETED)
    logger.info("run.stop_requested", run_id=uid, namespace=body.metadata.namespace, name=body.metadata.name,
                why="deleted while " + str(phase))


@kopf.on.create(*RESOURCE)
async def dispatch_run(*, body: kopf.Body, memo: Any, **kwargs: Any) -> None:
    pool_queues: kopf.Index[tuple[str, str], str] = kwargs["pool_queues"]
    state = memos.of(memo)
    try:
        await dispatching.dispatch(
            api=state.api,
            dramatiq_broker=state.broker,
            pools=pool_queues,
            body=body,
            pool_wait_seconds=state.config.pool_wait_seconds,
            db=state.store,
            redis=state.redis,
            settings=state.config,
        )
    except kopf.TemporaryError:
        raise  # waiting for a WorkerPool is not an error
    except Exception:
        metrics.RECONCILE_ERRORS.labels("dispatch").inc()
        raise


@kopf.on.field(*RESOURCE, field="spec.stop", value=True)
async def stop_run(*, body: kopf.Body, uid: str, status: kopf.Status, memo: Any, **_: Any) -> None:
    """``spec.stop: true`` becomes a durable stop request the worker honours, even later."""
    if phases.is_terminal(views.RunStatus(status).phase):
        return
    state = memos.of(memo)
    if state.redis is None:
        raise kopf.PermanentError("no Redis configured (AGENTRUN_REDIS_URL): cannot deliver a stop request")
    await control.request_stop(state.redis, uid, ttl_seconds=state.config.key_ttl_seconds,
                               reason=reasons.Reason.STOP_REQUESTED)
    kopf.info(body, reason=reasons.Reason.STOP_REQUESTED, message="stop requested")
    logger.info("run.stop_requested", run_id=uid)
