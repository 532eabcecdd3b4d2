"""Admission: whether a delivery of a run may execute it, before anything is written.

Called by ``execution`` first. A delivery is dropped when the database or the resource says
the run ended, when the resource was deleted or replaced (its uid differs), when its attempt
is older than the resource's, or when another worker holds the lease (a duplicate). An
admitted delivery holds the lease; a ``spec.stop: true`` on the resource (its Redis flag
erased by a restart, or never written) is handed to the stop watch.
"""

from __future__ import annotations

import structlog

from agentrun import kube, message, phases, reasons, views
from agentrun_worker import leases, runtime, stopping

logger = structlog.get_logger(__name__)


async def admit(msg: message.RunMessage, clients: runtime.Clients, lease: leases.Lease,
                watch: stopping.StopWatch) -> bool:
    """Whether to execute the run; when True, ``lease`` is held."""
    record = await clients.store.get_run(msg.uid)
    if record is not None and phases.is_terminal(record.status):
        logger.info("run.skipped", why="already ended", phase=record.status)
        return False
    if not await lease.acquire():
        logger.info("run.skipped", why="duplicate delivery: lease held", holder=await lease.holder())
        return False
    try:
        run = views.AgentRun(kube.to_dict(await clients.api.get(kube.AgentRun, msg.name, namespace=msg.namespace)))
    except kube.ApiError as exc:
        await lease.release()
        if kube.is_not_found(exc):
            logger.info("run.skipped", why="AgentRun deleted")
            return False
        raise
    why = None
    if not run.is_run(msg.uid) or phases.is_terminal(run.status.phase):
        why = "AgentRun replaced or ended"
    elif run.status.attempt > msg.attempt:
        why = "stale attempt"
    if why is not None:
        logger.info("run.skipped", why=why, phase=run.status.phase, current=run.status.attempt)
        await lease.release()
        return False
    if run.spec.stop:  # its Redis flag erased by a restart, or never written
        watch.request(reasons.Reason.STOP_REQUESTED)
    return True
