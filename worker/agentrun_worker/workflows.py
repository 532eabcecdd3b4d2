"""Workflows: the deterministic and the agent-driven executor of an AgentWorkflow.

Called by ``execution`` for a run whose spec has a ``workflowRef``; the operator resolved the
AgentWorkflow into the message (``spec.workflow``), so the worker reads no workflow from the
API. :func:`executor` returns an object shaped like ``agent.AgentLoop`` — ``run()`` and a live
``outcome`` — so ``execution`` drives it the same way: a stop, the deadline, a lost lease or a
shutdown hand-back cancel its task, mid-step included, and the summed outcome so far is what
gets reported.

A **step** is one agent loop (``agent.AgentLoop``): the workflow's agent with the step's
overrides (``model``, ``systemPrompt``, ``tools``, ``maxIterations``, ``script``), the thread's
history from before this run, and the step's prompt rendered by ``agentrun.templates``
(``{{input}}``, ``{{steps.<name>.output}}``) as the user message. Its output is its
``complete`` text, else its last reply. Its prompt and turns are stored in the thread (ids
``<uid>/<attempt>/step/<name>.<n>/...``) and its events go to the run's one stream, each
with a ``step`` field, between a ``step`` event ``started`` and one ``completed``/``failed``.

- **deterministic**: every step once, in order. An ``ask`` ends the run
  ``Succeeded``/``AskedUser`` with the question, as an agent run would; a step that fails or
  reaches its ``maxIterations`` without completing fails the run ``StepFailed`` (the message
  names the step and why). The last step's output is the run's result.
- **agent**: the workflow's agent is given the steps (names, descriptions, which outputs each
  prompt uses) in its system prompt and a ``run_step`` tool, and decides which steps to run,
  in which order, how often. A step's output (or its failure) is the tool's result; a step's
  ``ask`` ends the run waiting for the user. The run ends as the agent ends it.

Iterations and token usage are the sums over every loop; ``maxTokens`` of the workflow's
agent is the budget of the whole run.

A completed step stores a record (role ``step``: output, iterations, usage) in the thread. A
run handed back at shutdown is resumed from those: its next delivery does not run a
completed step again, runs the interrupted one again as a new run of it, and the agent
executor's own loop goes on after its last stored turn.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import re
from typing import Any

import structlog

from agentrun import message, reasons, store, streams, templates, views
from agentrun_worker import agent, config, history, mcp, providers, tools
from agentrun_worker import outcome as run_outcome
from agentrun_worker.providers import base as providers_base

logger = structlog.get_logger(__name__)

STEP = streams.STEP
"""The event type of a step's boundaries and the field naming the step (see ``agentrun.streams``)."""
RUN_STEP = "run_step"
"""The tool through which the agent executor runs a step."""
DETERMINISTIC = "deterministic"
AGENT = "agent"

STEP_RECORD = "step"
"""The role of a completed step's record in the thread (its output, iterations and usage);
the model never sees it, a resumed execution reads it back."""

STEP_OVERRIDES = ("model", "systemPrompt", "tools", "maxIterations", "script")
_STEP_ID = re.compile(r"^step/([a-z0-9](?:[-a-z0-9]*[a-z0-9])?)\.(\d+)/(.+)$")
_ORCHESTRATOR_ID = re.compile(r"^\d+(/tool/\d+)?$")
OUTPUT_IN_EVENT_MAX = 4096


class Refused(Exception):
    """The workflow cannot start (not resolved, invalid, a model or tool this worker lacks)."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


class StepFailed(Exception):
    """A step of the deterministic executor failed or did not complete."""

    reason = reasons.Reason.STEP_FAILED


def step_agent(workflow_agent: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
    """The agent of one step: the workflow's, with the step's overrides.

    A step that changes the model without giving a script does not inherit the workflow's
    script (a script is only for the scripted model).
    """
    merged = dict(workflow_agent)
    if "model" in step and "script" not in step:
        merged.pop("script", None)
    merged.update({key: step[key] for key in STEP_OVERRIDES if key in step})
    return merged


class _Tagged:
    """An emitter that adds the step's name to every event of the step's loop."""

    def __init__(self, writer: streams.Emitter, step: str) -> None:
        self._writer = writer
        self._step = step

    def emit(self, event: dict[str, Any]) -> None:
        self._writer.emit({**event, STEP: self._step})


@dataclasses.dataclass
class Context:
    """What every step needs of the run."""

    writer: streams.StreamWriter
    db: store.Store
    run_id: str
    attempt: int
    thread_id: str
    settings: config.WorkerSettings
    user_input: str
    history: list[dict[str, Any]]
    """The thread's messages from before this run (as the model sees them)."""
    resumed: list[store.MessageRecord] = dataclasses.field(default_factory=list)
    """What an interrupted execution of this attempt stored (a run handed back at shutdown)."""
    servers: list[tools.Server] = dataclasses.field(default_factory=list)
    """The run's MCP servers, started once for every step that may use them."""

    def turn_id(self, suffix: str) -> str:
        return f"{self.run_id}/{self.attempt}/{suffix}"


class Executor:
    """The steps, their outputs so far, and the run's outcome summed over every loop."""

    def __init__(self, ctx: Context, workflow: dict[str, Any]) -> None:
        self._ctx = ctx
        self._workflow = workflow
        self._agent: dict[str, Any] = dict(workflow.get("agent") or {})
        self._steps: list[dict[str, Any]] = list(workflow.get("steps") or [])
        self._index = {str(step["name"]): index for index, step in enumerate(self._steps)}
        self._runs: collections.Counter[str] = collections.Counter()
        self._max_tokens = int(self._agent["maxTokens"]) if self._agent.get("maxTokens") else None
        self._done = run_outcome.Outcome(result="", iterations=0)
        self._current: agent.AgentLoop | None = None
        self.outputs: dict[str, str] = {}
        self._completed: set[str] = set()
        self._check()
        self._restore()

    def _restore(self) -> None:
        """Take back what an interrupted execution of this attempt finished: the outputs,
        iterations and usage of its completed steps (their ``step`` records), and how often
        each step was started, so a step run again gets new message ids."""
        for record in self._ctx.resumed:
            found = _STEP_ID.match(record.id[len(self._ctx.turn_id("")):])
            if found is None or found.group(1) not in self._index:
                continue
            name, run, what = found.group(1), int(found.group(2)), found.group(3)
            self._runs[name] = max(self._runs[name], run)
            if what == "output" and record.role == STEP_RECORD and isinstance(record.content, dict):
                self.outputs[name] = str(record.content.get("output", ""))
                self._completed.add(name)
                usage = record.content.get("usage") or {}
                self._done.add(run_outcome.Outcome(result="", iterations=int(record.content.get("iterations") or 0),
                                               input_tokens=int(usage.get("inputTokens") or 0),
                                               output_tokens=int(usage.get("outputTokens") or 0)))
        if self._completed:
            logger.info("workflow.resumed", completed=sorted(self._completed))

    def _check(self) -> None:
        """Every step's model and tools exist in this worker: refuse before any model call."""
        for step in self._steps:
            try:
                spec = step_agent(self._agent, step)
                providers.for_agent(spec, "", self._ctx.settings)
                tools.for_agent(spec, servers=self._ctx.servers)
            except (providers_base.ProviderUnavailable, tools.ToolNotFound) as exc:
                raise Refused(exc.reason, f'step "{step["name"]}": {exc}') from None

    @property
    def outcome(self) -> run_outcome.Outcome:
        total = dataclasses.replace(self._done)
        if self._current is not None:
            total.add(self._current.outcome)
        return total

    async def run(self) -> run_outcome.Outcome:
        raise NotImplementedError

    def _used(self) -> int:
        outcome = self.outcome
        return outcome.input_tokens + outcome.output_tokens

    async def run_step(self, name: str, instructions: str = "") -> run_outcome.Outcome:
        """Run step ``name`` once; its loop's outcome (the step's output is its result).

        Raises TemplateError (a step output it needs is not there yet) before anything is
        streamed, and whatever the step's loop raises.
        """
        ctx, index = self._ctx, self._index[name]
        step = self._steps[index]
        prompt = templates.render(str(step["prompt"]), input=ctx.user_input, outputs=self.outputs)
        if instructions:
            prompt = f"{prompt}\n\n{instructions}"
        spec = step_agent(self._agent, step)
        if self._max_tokens is not None:
            used = self._used()
            if used >= self._max_tokens:
                raise agent.BudgetExceeded(f"the run used {used} tokens of its budget maxTokens={self._max_tokens}")
            spec["maxTokens"] = self._max_tokens - used
        self._runs[name] += 1
        run = self._runs[name]
        prefix = f"step/{name}.{run}/"
        head = {"type": STEP, "step": name, "index": index, "run": run}
        ctx.writer.emit({**head, "status": "started", "prompt": prompt})
        await ctx.db.add_message(ctx.thread_id, "user", prompt, run_id=ctx.run_id,
                                 message_id=ctx.turn_id(f"{prefix}prompt"))
        loop = agent.AgentLoop(
            provider=providers.for_agent(spec, prompt, ctx.settings), writer=_Tagged(ctx.writer, name), db=ctx.db,
            run_id=ctx.run_id, attempt=ctx.attempt, thread_id=ctx.thread_id, agent=spec,
            history=[*ctx.history, {"role": "user", "content": prompt}],
            registry=tools.for_agent(spec, servers=ctx.servers),
            turn_prefix=prefix,
        )
        self._current = loop
        try:
            outcome = await loop.run()
        except Exception as exc:
            ctx.writer.emit({**head, "status": "failed", "reason": reasons.of(exc),
                             "message": str(exc) or type(exc).__name__, "iterations": loop.outcome.iterations,
                             "usage": loop.outcome.usage})
            raise
        finally:
            self._current = None
            self._done.add(loop.outcome)
        if outcome.reason == tools.COMPLETED:
            # Only a completed step's output feeds later prompts; its record is what a resumed
            # execution takes back instead of running the step again
            self.outputs[name] = outcome.result
            await ctx.db.add_message(ctx.thread_id, STEP_RECORD, {
                "step": name, "run": run, "output": outcome.result, "iterations": outcome.iterations,
                "usage": outcome.usage}, run_id=ctx.run_id, message_id=ctx.turn_id(f"{prefix}output"))
            self._completed.add(name)
        ctx.writer.emit({**head, "status": "completed", "reason": outcome.reason,
                         "output": outcome.result[:OUTPUT_IN_EVENT_MAX], "iterations": outcome.iterations,
                         "usage": outcome.usage})
        logger.info("workflow.step_done", step=name, run=run, reason=outcome.reason, iterations=outcome.iterations)
        return outcome


class Deterministic(Executor):
    """Every step once, in the listed order."""

    async def run(self) -> run_outcome.Outcome:
        total = len(self._steps)
        result = run_outcome.Outcome(result="", iterations=0)
        for position, step in enumerate(self._steps, start=1):
            name = str(step["name"])
            if name in self._completed:  # done by an interrupted execution of this attempt
                result = self.outcome
                result.result = self.outputs[name]
                continue
            where = f'step "{name}" ({position} of {total})'
            try:
                outcome = await self.run_step(name)
            except agent.BudgetExceeded as exc:
                raise agent.BudgetExceeded(f"{where}: {exc}") from exc
            except Exception as exc:
                reason = getattr(exc, "reason", type(exc).__name__)
                raise StepFailed(f"{where} failed: {reason}: {exc}") from exc
            if outcome.reason == tools.ASKED_USER:
                result = self.outcome
                result.result, result.reason = outcome.result, tools.ASKED_USER
                return result
            if outcome.reason != tools.COMPLETED:
                limit = step_agent(self._agent, step).get("maxIterations", 100)
                raise StepFailed(f"{where} reached maxIterations={limit} without completing")
            result = self.outcome
            result.result = outcome.result
        result.reason = tools.COMPLETED
        return result


class AgentDriven(Executor):
    """The workflow's agent runs, with the steps as a ``run_step`` tool, and decides."""

    def __init__(self, ctx: Context, workflow: dict[str, Any]) -> None:
        super().__init__(ctx, workflow)
        spec = dict(self._agent)
        spec["systemPrompt"] = "\n\n".join(p for p in (spec.get("systemPrompt"), self.describe()) if p)
        try:
            provider = providers.for_agent(spec, ctx.user_input, ctx.settings)
            registry = _StepTools(tools.for_agent(spec, servers=self._ctx.servers), self)
        except (providers_base.ProviderUnavailable, tools.ToolNotFound) as exc:
            raise Refused(exc.reason, str(exc)) from None
        # An interrupted execution's own turns (ids <uid>/<attempt>/<n>[/tool/<i>]): go on after them
        own = [m for m in ctx.resumed if _ORCHESTRATOR_ID.match(m.id[len(ctx.turn_id("")):])]
        turns = [m for m in own if m.role == "assistant"]
        self._orchestrator = agent.AgentLoop(
            provider=provider, writer=ctx.writer, db=ctx.db, run_id=ctx.run_id, attempt=ctx.attempt,
            thread_id=ctx.thread_id, agent=spec,
            history=[*ctx.history, {"role": "user", "content": ctx.user_input}, *map(history.model_message, own)],
            registry=registry, completed_turns=len(turns),
            last_result=history.last_result(turns),
        )

    def describe(self) -> str:
        """The workflow as the model reads it in its system prompt."""
        name = self._workflow.get("name", "")
        lines = [f'You carry out the workflow "{name}".']
        if self._workflow.get("description"):
            lines.append(str(self._workflow["description"]))
        lines += [
            f"Its steps are run with the {RUN_STEP} tool: give the step's name, and optionally instructions "
            "to add to the step's prompt. The tool returns the step's output. Decide which steps to run and "
            "in which order; a step can use the outputs of steps that ran before it. When the task is done, "
            "call complete with the final answer.",
            "Steps:",
        ]
        for step in self._steps:
            line = f"- {step['name']}: {step.get('description') or '(no description)'}"
            used = list(dict.fromkeys(templates.references(str(step["prompt"]))))
            if used:
                line += f" (uses the output of: {', '.join(used)})"
            lines.append(line)
        return "\n".join(lines)

    @property
    def outcome(self) -> run_outcome.Outcome:
        total = super().outcome
        own = self._orchestrator.outcome
        total.add(own)
        total.result, total.reason = own.result, own.reason
        return total

    async def run(self) -> run_outcome.Outcome:
        await self._orchestrator.run()
        return self.outcome

    def tool_schema(self) -> dict[str, Any]:
        return tools.Tool(
            name=RUN_STEP,
            description="Run one step of the workflow and get its output.",
            parameters={
                "type": "object",
                "properties": {
                    "step": {"type": "string", "enum": list(self._index), "description": "The step to run."},
                    "instructions": {"type": "string",
                                     "description": "Optional text added to the end of the step's prompt."},
                },
                "required": ["step"],
                "additionalProperties": False,
            },
            run=_never,
        ).schema()

    async def call_step(self, arguments: str) -> tools.Result:
        """``run_step``: the step's output, or an error the model reads; ``ask`` ends the run."""
        try:
            args = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            return tools.Result(f"error: the arguments are not valid JSON ({exc})", error=True)
        name = args.get("step") if isinstance(args, dict) else None
        if name not in self._index:
            return tools.Result(f"error: no step named {name!r}; steps: {', '.join(self._index)}", error=True)
        instructions = args.get("instructions")
        try:
            outcome = await self.run_step(str(name), instructions if isinstance(instructions, str) else "")
        except templates.TemplateError as exc:
            return tools.Result(f"error: cannot run step {name!r} yet: {exc}", error=True)
        except agent.BudgetExceeded:
            raise  # the run's budget, not the step's: the run fails
        except Exception as exc:  # the agent sees the failure and may try something else
            reason = getattr(exc, "reason", type(exc).__name__)
            return tools.Result(f"error: step {name!r} failed: {reason}: {exc}", error=True)
        if outcome.reason == tools.ASKED_USER:
            return tools.Result(outcome.result, ends_run=tools.ASKED_USER)
        if outcome.reason != tools.COMPLETED:
            return tools.Result(f"error: step {name!r} reached its maxIterations without completing; "
                                f"its last reply: {outcome.result}", error=True)
        return tools.Result(outcome.result)


async def _never(_: dict[str, Any]) -> str:  # run_step is answered by _StepTools.call
    raise NotImplementedError


class _StepTools(tools.Registry):
    """The orchestrating agent's tools: its own, plus ``run_step``."""

    def __init__(self, inner: tools.Registry, workflow: AgentDriven) -> None:
        super().__init__(())
        self._inner = inner
        self._workflow = workflow

    @property
    def names(self) -> list[str]:
        return [*self._inner.names, RUN_STEP]

    def schemas(self) -> list[dict[str, Any]]:
        return [*self._inner.schemas(), self._workflow.tool_schema()]

    async def call(self, name: str, arguments: str) -> tools.Result:
        if name == RUN_STEP:
            return await self._workflow.call_step(arguments)
        return await self._inner.call(name, arguments)


async def executor(
    msg: message.RunMessage,
    *,
    user_input: str,
    writer: streams.StreamWriter,
    db: store.Store,
    settings: config.WorkerSettings,
    toolbox: mcp.Toolbox | None = None,
    stop: asyncio.Event | None = None,
    conversation: history.Conversation | None = None,
) -> Executor:
    """The executor of the run's workflow; Refused when it cannot start.

    The MCP servers any step (or the agent-driven executor's own agent) may use are started in
    ``toolbox`` first, once for the run; :class:`mcp.ServerUnavailable` or
    :class:`mcp.Interrupted` (``stop`` set while they start) come out of here as they are.
    ``conversation`` is the run's thread when the caller read it already."""
    workflow = msg.spec.get("workflow")
    name = views.RunSpec(msg.spec).workflow_name or ""
    if not isinstance(workflow, dict):
        raise Refused(reasons.Reason.WORKFLOW_NOT_FOUND,
                      f'AgentWorkflow "{name}" was not resolved when the run was queued '
                      "(it did not exist, or was invalid, then)")
    problems = templates.check_workflow(workflow)
    if problems:
        raise Refused(reasons.Reason.WORKFLOW_INVALID, f'AgentWorkflow "{name}": ' + "; ".join(problems))
    # The steps see the thread as it was before this run; the run's own input reaches them
    # through {{input}}, and messages of an interrupted execution of this run are left out.
    if conversation is None:
        conversation = await history.read(db, msg.thread_id, run_id=msg.uid, attempt=msg.attempt)
    servers: list[tools.Server] = []
    if toolbox is not None:
        base = dict(workflow.get("agent") or {})
        try:
            servers = await mcp.start_for_all([base, *(step_agent(base, s) for s in workflow.get("steps") or [])],
                                              settings, toolbox, stop)
        except tools.ToolNotFound as exc:
            raise Refused(exc.reason, str(exc)) from None
    ctx = Context(writer=writer, db=db, run_id=msg.uid, attempt=msg.attempt, thread_id=msg.thread_id,
                  settings=settings, user_input=user_input, history=conversation.history(other_runs_only=True),
                  resumed=conversation.resumed(), servers=servers)
    kind = workflow.get("executor", DETERMINISTIC)
    logger.info("workflow.start", workflow=name, executor=kind, steps=len(workflow.get("steps") or []))
    return AgentDriven(ctx, workflow) if kind == AGENT else Deterministic(ctx, workflow)
