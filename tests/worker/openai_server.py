"""A local HTTP server speaking the OpenAI Chat Completions streaming wire format, for the tests.

``POST /v1/chat/completions`` answers with the next queued reply: either an SSE stream —
``data: {chunk}`` lines exactly as OpenAI sends them (a role chunk, content or tool-call
deltas, a chunk with ``finish_reason``, the usage chunk with empty ``choices``, then
``data: [DONE]``) — or an error: a status code with OpenAI's ``{"error": {...}}`` body. It
records every request (body and headers) for the tests to check. It runs on its own event
loop thread, so in-process tests and worker subprocesses can both use it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from typing import Any

from aiohttp import web

from tests.e2e import harness

CREATED = 1_700_000_000


def chunk(delta: dict[str, Any] | None, finish: str | None = None, *, usage: dict[str, int] | None = None,
          model: str = "test-model") -> dict[str, Any]:
    """One ``chat.completion.chunk``; with ``usage`` it is the final usage chunk (no choices)."""
    body: dict[str, Any] = {"id": "chatcmpl-test", "object": "chat.completion.chunk", "created": CREATED,
                            "model": model, "system_fingerprint": "fp_test", "usage": None}
    if usage is not None:
        body["choices"] = []
        body["usage"] = {**usage, "total_tokens": usage["prompt_tokens"] + usage["completion_tokens"]}
    else:
        body["choices"] = [{"index": 0, "delta": delta or {}, "logprobs": None, "finish_reason": finish}]
    return body


def text_reply(*pieces: str, finish: str = "stop", prompt_tokens: int = 10) -> list[dict[str, Any]]:
    chunks = [chunk({"role": "assistant", "content": "", "refusal": None})]
    chunks += [chunk({"content": piece}) for piece in pieces]
    chunks.append(chunk({}, finish))
    chunks.append(chunk(None, usage={"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces)}))
    return chunks


def tool_reply(*calls: tuple[str, str, str], text: str = "", pieces: int = 3) -> list[dict[str, Any]]:
    """Tool calls ``(id, name, arguments JSON)``, each one's arguments split over ``pieces`` deltas."""
    chunks = [chunk({"role": "assistant", "content": text or None, "refusal": None})]
    for index, (call_id, name, arguments) in enumerate(calls):
        chunks.append(chunk({"tool_calls": [{"index": index, "id": call_id, "type": "function",
                                             "function": {"name": name, "arguments": ""}}]}))
        size = max(1, -(-len(arguments) // pieces))
        for start in range(0, len(arguments), size):
            chunks.append(chunk({"tool_calls": [{"index": index,
                                                 "function": {"arguments": arguments[start:start + size]}}]}))
    chunks.append(chunk({}, "tool_calls"))
    chunks.append(chunk(None, usage={"prompt_tokens": 20, "completion_tokens": 5}))
    return chunks


@dataclasses.dataclass
class Error:
    status: int
    message: str
    type: str = "server_error"
    headers: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Stream:
    chunks: list[dict[str, Any]]
    delay: float = 0.0
    cut: bool = False
    """Drop the connection after the chunks, without ``[DONE]`` (a provider that fails mid-answer)."""


class OpenAIServer:
    def __init__(self) -> None:
        self.replies: list[Stream | Error] = []
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.port = harness.free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reply(self, *replies: list[dict[str, Any]] | Stream | Error) -> None:
        self.replies.extend(r if isinstance(r, Stream | Error) else Stream(r) for r in replies)

    def start(self) -> OpenAIServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def stop(self) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._completions)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(await request.json())
        self.headers.append(dict(request.headers))
        if not self.replies:
            return web.json_response({"error": {"message": "no reply queued in the test server",
                                                 "type": "invalid_request_error", "param": None,
                                                 "code": None}}, status=400)
        reply = self.replies.pop(0)
        if isinstance(reply, Error):
            body = {"error": {"message": reply.message, "type": reply.type, "param": None, "code": None}}
            return web.json_response(body, status=reply.status, headers=reply.headers)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        for item in reply.chunks:
            await response.write(f"data: {json.dumps(item, separators=(',', ':'))}\n\n".encode())
            if reply.delay:
                await asyncio.sleep(reply.delay)
        if reply.cut:
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response
