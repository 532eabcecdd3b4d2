"""Settings only the worker reads, from ``AGENTRUN_*`` environment variables.

The settings every process shares (broker, Redis, database, queue, lease timing) are
:class:`agentrun.settings.Settings`; these are the worker's own. ``runtime.worker_config``
loads them once per process.
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Mapping
from typing import Any, Literal

import pydantic
from pydantic_settings import BaseSettings, SettingsConfigDict


class Endpoint(pydantic.BaseModel):
    """An OpenAI-compatible Chat Completions endpoint, selected by a model prefix."""

    model_config = pydantic.ConfigDict(extra="forbid")

    base_url: str | None = None
    """``https://…/v1``. Unset: ``OPENAI_BASE_URL``, else OpenAI's own."""
    api_key_env: str = "OPENAI_API_KEY"
    """The *name* of the environment variable that holds the key (the key itself never
    appears in settings, manifests or messages)."""
    thinking: Literal["reasoning_effort", "chat_template_kwargs", "none"] = "reasoning_effort"
    """How ``enableThinking``/``reasoningEffort`` reach the model: OpenAI's ``reasoning_effort``,
    vLLM/SGLang's ``chat_template_kwargs.enable_thinking``, or not at all."""


class WorkerSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTRUN_", extra="ignore")

    metrics_port: int = 9191
    """Port of the pod's ``/metrics`` (every worker process's series, see ``metrics``); 0 turns
    it off. 9191 is the port Dramatiq's own exporter used; the operator declares it as the
    container port ``metrics`` that the chart's PodMonitor scrapes."""

    shutdown_grace_seconds: float = 20.0
    """Seconds the runs in flight may go on after SIGTERM before they are handed back to the
    queue (their message re-published, their lease marked handed back) to run again on
    another worker. 20 s: most runs' last turn finishes within it, and it leaves 10 s of
    Kubernetes' default 30 s ``terminationGracePeriodSeconds`` for the hand-back and the
    process exit. Keep it below both that period and Dramatiq's ``--worker-shutdown-timeout``."""

    model_endpoints: dict[str, Endpoint] = pydantic.Field(default_factory=lambda: {"openai": Endpoint()})
    """Model prefix → endpoint, as JSON (``{"vllm": {"base_url": "http://vllm:8000/v1",
    "api_key_env": "VLLM_API_KEY", "thinking": "chat_template_kwargs"}}``). ``model: vllm/qwen3``
    then goes there. Default: ``openai`` with ``OPENAI_API_KEY`` and ``OPENAI_BASE_URL``."""

    model_max_retries: int = 4
    """Retries of one model turn after a transient error (408, 429, 5xx, connection). 4 with
    the backoff below rides out about 8 s of provider trouble before the run fails."""

    model_retry_base_seconds: float = 0.5
    """First backoff of a model retry, doubled each time (with jitter; ``Retry-After`` wins
    when longer)."""

    model_retry_max_seconds: float = 20.0
    """Upper bound of one backoff: beyond it a provider outage is better reported than waited on."""

    model_timeout_seconds: float = 300.0
    """Read timeout of a model request (between streamed chunks, and for the first one):
    reasoning models may think for minutes before the first token."""

    handback_delay_seconds: float = 2.0
    """Delay of a handed-back run's message before a worker may take it again. It must exceed
    the 1 s poll of Dramatiq's idle worker threads (``worker_timeout``), which may still take
    one message after SIGTERM; 2 s leaves margin and costs a resumed run only that long."""

    mcp_servers: list[dict[str, Any]] = pydantic.Field(default_factory=list)
    """The pool's standard MCP servers, as JSON (``WorkerPool.spec.mcpServers``, set by the
    operator): offered to every run with them, merged with the agent's own (see ``mcp``)."""

    mcp_tool_timeout_seconds: float = 120.0
    """Longest one MCP tool call may take (unless its server sets ``timeoutSeconds``) before it
    becomes a tool error the model sees: long enough for a search or a build, short enough
    that a hung server does not hold a run until its deadline."""

    mcp_connect_timeout_seconds: float = 30.0
    """Longest an MCP server may take to start and list its tools before the run fails with
    ``MCPServerUnavailable``: a stdio server fetched by ``npx``/``uvx`` on first use needs seconds."""

    thread_poll_seconds: float = 2.0
    """How often a run waiting for a busy thread (``multitaskStrategy: enqueue``/``interrupt``)
    checks it again: its message comes back after this delay. 2 s costs a waiting run at
    most that much after the thread frees; each poll costs one small message, a few Redis
    commands and one GET of the AgentRun."""


def load() -> WorkerSettings:
    return WorkerSettings()


pool_env: contextvars.ContextVar[Mapping[str, str] | None] = contextvars.ContextVar("pool_env", default=None)
"""The environment of the WorkerPool whose message is being processed, over the process's.

In a cluster each pool has processes of its own and this stays empty. ``agentrun dev`` runs
every pool in one process and sets it per message (``runtime.enter_queue``), so that a pool's
``env`` reaches its runs only."""


def getenv(name: str) -> str | None:
    """A variable of the worker's environment: its pool's (in ``agentrun dev``), else the process's."""
    value = (pool_env.get() or {}).get(name)
    return value if value is not None else os.environ.get(name)
