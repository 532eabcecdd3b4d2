"""OpenAI-compatible Chat Completions streaming, through the ``openai`` library.

Selected by ``model: <prefix>/<model>`` where ``<prefix>`` is a key of the worker setting
``AGENTRUN_MODEL_ENDPOINTS`` (by default only ``openai``: ``openai/gpt-4o-mini``). The
endpoint names the base URL and the *name* of the environment variable holding the API key:
credentials come from the WorkerPool's environment, never from the AgentRun or the message,
and are never logged. The same wire protocol serves OpenAI, vLLM, Ollama, OpenRouter, a
LiteLLM proxy...

One turn is one streamed request: text deltas go to ``on_delta`` as they arrive, tool-call
deltas are assembled by their ``index`` into whole calls, usage comes from the final chunk
(``stream_options.include_usage``). ``enableThinking``/``reasoningEffort`` become
``reasoning_effort`` (OpenAI reasoning models) or ``chat_template_kwargs.enable_thinking``
(vLLM/SGLang chat templates such as Qwen's), as the endpoint says.

Retries: only transient failures (HTTP 408, 429, 5xx, connection errors and timeouts), only
before the first delta of the turn was streamed (a retry after that would repeat text the
reader already has), with exponential backoff and jitter, honouring ``Retry-After``. Every
other error (400, 401, 404, an error event inside the stream...) fails the run with
``ModelError`` and the provider's message.
"""

from __future__ import annotations

import asyncio
import inspect
import random
from typing import Any

import httpx2
import openai
import structlog

from agentrun_worker import config
from agentrun_worker.providers import base

logger = structlog.get_logger(__name__)

_clients: dict[str, openai.AsyncOpenAI] = {}


def split_model(model: str) -> tuple[str, str] | None:
    """``("openai", "gpt-4o")`` for ``"openai/gpt-4o"``; None without a prefix."""
    prefix, sep, name = model.partition("/")
    return (prefix, name) if sep and prefix and name else None


def client_for(prefix: str, endpoint: config.Endpoint, settings: config.WorkerSettings) -> openai.AsyncOpenAI:
    """The process's client for an endpoint (one connection pool each), built on first use.

    Keyed by the key and URL too: in ``agentrun dev`` pools share a process, each with its own
    environment (``config.getenv``)."""
    api_key = config.getenv(endpoint.api_key_env)
    if not api_key:
        raise base.ProviderUnavailable(
            f'model prefix "{prefix}" needs an API key in the worker\'s environment variable '
            f"{endpoint.api_key_env} (set it on the WorkerPool; any value for servers without keys)"
        )
    # None: the library's default (OpenAI's own)
    base_url = endpoint.base_url or config.getenv("OPENAI_BASE_URL") or None
    key = f"{prefix}\0{base_url}\0{api_key}"
    client = _clients.get(key)
    if client is None:
        client = openai.AsyncOpenAI(
            api_key=api_key,
            base_url=base_url,
            max_retries=0,  # retried here, where a retry after streamed text can be refused
            timeout=httpx2.Timeout(settings.model_timeout_seconds, connect=10.0),
        )
        _clients[key] = client
    return client


async def close() -> None:
    clients = list(_clients.values())
    _clients.clear()
    for client in clients:
        await client.close()


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in (408, 429) or exc.status_code >= 500
    return isinstance(exc, httpx2.TransportError)


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, openai.APIStatusError):
        body = exc.body
        detail = body.get("message") if isinstance(body, dict) else None
        return f"HTTP {exc.status_code} from the model provider: {detail or exc.message}"
    if isinstance(exc, openai.APIError):
        return f"model provider error: {exc.message}"
    return f"model provider unreachable: {type(exc).__name__}: {exc}"


def _retry_after(exc: BaseException) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


class ChatCompletionsProvider(base.Provider):
    def __init__(
        self,
        *,
        client: openai.AsyncOpenAI,
        model: str,
        agent: dict[str, Any],
        endpoint: config.Endpoint,
        settings: config.WorkerSettings,
    ) -> None:
        self._client = client
        self._model = model
        self._agent = agent
        self._endpoint = endpoint
        self._settings = settings

    def params(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None) -> dict[str, Any]:
        """The request body (without secrets): model, messages, streaming, tools, thinking."""
        params: dict[str, Any] = {
            "model": self._model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:
            params["tools"] = tools
        effort = self._agent.get("reasoningEffort")
        thinking = bool(self._agent.get("enableThinking"))
        if self._endpoint.thinking == "reasoning_effort" and (effort or thinking):
            params["reasoning_effort"] = effort or "medium"
        elif self._endpoint.thinking == "chat_template_kwargs" and (effort or thinking):
            params["extra_body"] = {"chat_template_kwargs": {"enable_thinking": True}}
        return params

    async def turn(
        self,
        messages: list[dict[str, Any]],
        *,
        iteration: int,
        on_delta: base.OnDelta,
        tools: list[dict[str, Any]] | None = None,
    ) -> base.Turn:
        params = self.params(messages, tools)
        retries = 0
        while True:
            streamed = [False]
            try:
                return await self._stream(params, on_delta, streamed)
            except (openai.APIError, httpx2.HTTPError) as exc:
                if streamed[0] or not is_transient(exc) or retries >= self._settings.model_max_retries:
                    raise base.ProviderError(_error_text(exc)) from exc
                backoff = min(self._settings.model_retry_max_seconds,
                              self._settings.model_retry_base_seconds * 2**retries)
                delay = max(_retry_after(exc) or 0.0, backoff * random.uniform(0.5, 1.0))
                retries += 1
                logger.warning("model.retry", model=self._model, retry=retries, delay_s=round(delay, 3),
                               error=_error_text(exc))
                await asyncio.sleep(delay)

    async def _stream(self, params: dict[str, Any], on_delta: base.OnDelta, streamed: list[bool]) -> base.Turn:
        text: list[str] = []
        calls: dict[int, dict[str, str]] = {}
        finish: str | None = None
        input_tokens = output_tokens = 0
        stream = await self._client.chat.completions.create(**params)
        async with stream:  # closes the HTTP response when the run is stopped mid-stream
            async for chunk in stream:
                if chunk.usage is not None:
                    input_tokens = chunk.usage.prompt_tokens or 0
                    output_tokens = chunk.usage.completion_tokens or 0
                for choice in chunk.choices:
                    delta = choice.delta
                    if delta is not None and delta.content:
                        streamed[0] = True
                        text.append(delta.content)
                        result = on_delta(delta.content)
                        if inspect.isawaitable(result):
                            await result
                    for tc in (delta.tool_calls if delta is not None else None) or []:
                        streamed[0] = True
                        slot = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                        if tc.id:
                            slot["id"] = tc.id
                        if tc.function is not None:
                            slot["name"] += tc.function.name or ""
                            slot["arguments"] += tc.function.arguments or ""
                    if choice.finish_reason:
                        finish = choice.finish_reason
        tool_calls = [
            base.ToolCall(id=c["id"] or f"call_{i}", name=c["name"], arguments=c["arguments"])
            for i, c in sorted(calls.items())
        ]
        # No tool call and a natural stop: the agent has answered. Tool calls, or a reply cut
        # at the length limit, continue the loop (bounded by maxIterations).
        done = not tool_calls and finish not in ("length", "tool_calls")
        return base.Turn(
            text="".join(text),
            finish="complete" if done else "continue",
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            tool_calls=tool_calls,
        )
