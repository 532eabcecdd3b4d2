"""What executes a run: the agent loop or a workflow executor, prepared the same way.

Called by ``execution`` once the run is ``Running``. Both kinds of run read their thread
through ``history`` (every page, and what an interrupted delivery of this attempt stored),
and both come back as a :class:`Runner`: ``run()`` to the end, and a live ``outcome`` the
execution reads when it cancels the run (a stop, the deadline, a lost lease, a hand-back).
What cannot start is :class:`Refused` with the reason the run fails with; a stop while the
run's MCP servers start is ``mcp.Interrupted``.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

from agentrun import message, reasons, store, streams, views
from agentrun_worker import agent, config, history, inputs, mcp, providers, tools, workflows
from agentrun_worker import outcome as run_outcome
from agentrun_worker.providers import base as providers_base

logger = structlog.get_logger(__name__)


class Runner(Protocol):
    @property
    def outcome(self) -> run_outcome.Outcome:
        """What the run counted so far (read when its task is cancelled)."""

    async def run(self) -> run_outcome.Outcome:
        """Run to the end: the outcome, or an exception with a ``reason``."""


class Refused(Exception):
    """The run cannot start (a model, tool, MCP server or workflow it names is not there)."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


_REFUSALS = (workflows.Refused, mcp.ServerUnavailable, providers_base.ProviderUnavailable, tools.ToolNotFound)


async def prepare(
    msg: message.RunMessage,
    user_input: inputs.UserInput,
    *,
    writer: streams.StreamWriter,
    db: store.Store,
    settings: config.WorkerSettings,
    toolbox: mcp.Toolbox,
    stop: asyncio.Event,
) -> Runner:
    """The runner of ``msg``'s run, its MCP servers started in ``toolbox``."""
    conversation = await history.read(db, msg.thread_id, run_id=msg.uid, attempt=msg.attempt)
    try:
        if views.RunSpec(msg.spec).is_workflow:
            # a workflow's templates take text: image parts reach its steps as their text parts only
            return await workflows.executor(msg, user_input=inputs.text_of(user_input, "\n"), writer=writer, db=db,
                                            settings=settings, toolbox=toolbox, stop=stop, conversation=conversation)
        return await _agent(msg, inputs.text_of(user_input), conversation, writer=writer, db=db, settings=settings,
                            toolbox=toolbox, stop=stop)
    except _REFUSALS as exc:
        raise Refused(reasons.of(exc), str(exc)) from exc


async def _agent(
    msg: message.RunMessage,
    text: str,
    conversation: history.Conversation,
    *,
    writer: streams.StreamWriter,
    db: store.Store,
    settings: config.WorkerSettings,
    toolbox: mcp.Toolbox,
    stop: asyncio.Event,
) -> agent.AgentLoop:
    spec = dict(views.RunSpec(msg.spec).agent)
    provider = providers.for_agent(spec, text, settings)  # the text of content parts, for the scripted echo
    registry = await mcp.registry_for(spec, settings, toolbox, stop)
    # Turns this attempt already completed (a delivery handed back by a worker that shut
    # down): the loop resumes after them instead of running them again.
    resumed = conversation.resumed_turns()
    if resumed:
        logger.info("run.resumed", after_iteration=len(resumed))
    return agent.AgentLoop(
        provider=provider, writer=writer, db=db, run_id=msg.uid, attempt=msg.attempt, thread_id=msg.thread_id,
        agent=spec, history=conversation.history(), completed_turns=len(resumed),
        last_result=history.last_result(resumed), registry=registry,
    )
