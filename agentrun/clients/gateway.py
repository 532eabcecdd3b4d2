"""Runs through the gateway's HTTP API: REST for runs, Server-Sent Events for streams.

Chosen by ``agentrun … --gateway URL`` (or ``AGENTRUN_GATEWAY_URL``). The token comes from
``AGENTRUN_TOKEN`` or a file (``--token-file``; never a command-line value, which ``ps``
shows) and travels only in the ``Authorization`` header. A stream that drops (gateway
restarted, proxy timeout, the gateway's ``error`` event) is resumed with ``Last-Event-ID``
from the last entry received, so nothing is missed or repeated.

The gateway has no watch endpoint: ``watch`` polls the list. Without ``follow``, ``events``
reads until the stream is quiet for a moment (the SSE endpoint always follows).
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from agentrun import streams
from agentrun.clients import base

TOKEN_ENV = "AGENTRUN_TOKEN"
GATEWAY_HINT = ("Check --gateway / AGENTRUN_GATEWAY_URL and that the gateway runs (on a cluster: "
                "kubectl -n <namespace> port-forward svc/<release>-gateway 8000).")


def load_token(token_file: str | None) -> str | None:
    """The bearer token: the file's content when given, else ``AGENTRUN_TOKEN``, else None."""
    if token_file:
        try:
            token = pathlib.Path(token_file).expanduser().read_text().strip()
        except OSError as exc:
            raise base.ClientError(f"cannot read the token file {token_file}: {exc.strerror or exc}",
                                   "Pass a readable file with --token-file, or set AGENTRUN_TOKEN.") from exc
        if not token:
            raise base.ClientError(f"the token file {token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV, "").strip() or None


class GatewayClient(base.Client):
    def __init__(
        self,
        url: str,
        token: str | None,
        *,
        timeout: float = 15.0,
        stream_read_timeout: float = 60.0,
        give_up_seconds: float = 60.0,
        quiet_seconds: float = 1.0,
        snapshot_seconds: float = 10.0,
        poll_seconds: float = 2.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.where = f"the gateway at {self.url}"
        self._has_token = token is not None
        headers = {"User-Agent": "agentrun-cli"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.AsyncClient(base_url=self.url, headers=headers, timeout=httpx.Timeout(timeout))
        self._stream_read_timeout = stream_read_timeout
        """Longest silence on a stream before it counts as dropped: four of the gateway's 15 s
        heartbeats, so a half-open connection is noticed and resumed."""
        self._give_up_seconds = give_up_seconds
        self._quiet_seconds = quiet_seconds
        self._snapshot_seconds = snapshot_seconds
        self._poll_seconds = poll_seconds

    async def close(self) -> None:
        await self._http.aclose()

    # -- requests --------------------------------------------------------------------------------

    async def _request(self, method: str, path: str, *, namespace: str, name: str | None = None,
                       **kwargs: Any) -> httpx.Response:
        try:
            response = await self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if response.status_code >= 400:
            raise self._refusal(response, namespace, name)
        return response

    def _unreachable(self, exc: BaseException) -> base.Unreachable:
        return base.Unreachable(f"cannot reach {self.where}: {exc or type(exc).__name__}", GATEWAY_HINT)

    def _refusal(self, response: httpx.Response, namespace: str, name: str | None) -> base.ClientError:
        code = response.status_code
        try:
            body = response.json()
            message = str(body.get("message") or body.get("error") or response.reason_phrase)
        except (ValueError, AttributeError):
            message = f"{code} {response.reason_phrase}"
        if code == 401:
            hint = ("Get a fresh token (is it expired, or issued for another audience?) and put it in "
                    "AGENTRUN_TOKEN or a file for --token-file." if self._has_token else
                    "Set AGENTRUN_TOKEN, or pass --token-file PATH with a JWT the gateway accepts.")
            return base.Unauthorized(f"the gateway refused the token: {message}", hint)
        if code == 403:
            return base.Unauthorized(f"the gateway refused the request: {message}",
                                     f'Use a token whose namespaces claim includes "{namespace}", or another -n.')
        if code == 404:
            return base.not_found(namespace, name) if name else base.NotFound(message)
        if code in (400, 409, 413, 422):
            taken = "Pick another metadata.name, or use metadata.generateName for a fresh name each time."
            return base.Invalid(message, taken if code == 409 else None)
        if code in (502, 503):
            return base.ClientError(f"{self.where} answered {code}: {message}",
                                    "It cannot reach the Kubernetes API, Redis or the database; try again "
                                    "shortly, or look at the gateway's logs.")
        return base.ClientError(f"{self.where} answered {code}: {message}")

    @staticmethod
    def _runs(namespace: str, name: str | None = None) -> str:
        return f"/v1/namespaces/{namespace}/runs" + (f"/{name}" if name else "")

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        namespace = manifest["metadata"]["namespace"]
        response = await self._request("POST", self._runs(namespace), namespace=namespace, json=manifest)
        created: dict[str, Any] = response.json()
        return created

    async def get(self, namespace: str, name: str) -> dict[str, Any]:
        response = await self._request("GET", self._runs(namespace, name), namespace=namespace, name=name)
        run: dict[str, Any] = response.json()
        return run

    async def list_runs(self, namespace: str | None, phase: str | None = None) -> list[dict[str, Any]]:
        if namespace is None:
            raise base.Invalid("the gateway lists one namespace at a time", "Use -n NAMESPACE instead of -A.")
        params = {"phase": phase} if phase else {}
        response = await self._request("GET", self._runs(namespace), namespace=namespace, params=params)
        items: list[dict[str, Any]] = response.json()["items"]
        return items

    async def watch(self, namespace: str | None) -> AsyncIterator[dict[str, Any]]:
        """Every run on the first poll, then each run whose resourceVersion changed."""
        seen: dict[str, str] = {}
        while True:
            for run in await self.list_runs(namespace):
                meta = run.get("metadata") or {}
                key, version = str(meta.get("uid")), str(meta.get("resourceVersion"))
                if seen.get(key) != version:
                    seen[key] = version
                    yield run
            await asyncio.sleep(self._poll_seconds)

    async def stop(self, namespace: str, name: str) -> tuple[dict[str, Any], bool]:
        try:
            response = await self._request("POST", self._runs(namespace, name) + "/stop", namespace=namespace,
                                           name=name)
        except base.Invalid:  # 409: it has already ended
            return await self.get(namespace, name), False
        run: dict[str, Any] = response.json()
        return run, True

    # -- streams ---------------------------------------------------------------------------------

    async def events(self, run: dict[str, Any], *, last_id: str, follow: bool) -> AsyncIterator[base.Event]:
        namespace, name = run["metadata"]["namespace"], run["metadata"]["name"]
        path = self._runs(namespace, name) + "/stream"
        cursor = None if last_id == streams.START else last_id
        loop = asyncio.get_running_loop()
        started = loop.time()
        failing_since: float | None = None
        while True:
            headers = {"Accept": "text/event-stream"}
            if cursor is not None:
                headers["Last-Event-ID"] = cursor
            timeout = httpx.Timeout(self._http.timeout.connect, read=self._stream_read_timeout)
            try:
                async with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
                    if response.status_code >= 400:
                        await response.aread()
                        raise self._refusal(response, namespace, name)
                    frames = _frames(response).__aiter__()
                    while True:
                        wait = None
                        if not follow:
                            wait = min(self._quiet_seconds, max(0.0, started + self._snapshot_seconds - loop.time()))
                        try:
                            entry_id, event = await asyncio.wait_for(frames.__anext__(), wait)
                        except StopAsyncIteration:
                            break  # closed before the end: resume
                        except TimeoutError:
                            return  # not following, and nothing more is coming now
                        failing_since = None
                        if event.get("type") == "error":
                            break  # the gateway lost its Redis reader: resume from the cursor
                        if entry_id is not None:
                            cursor = entry_id
                        yield entry_id, event
                        if base.ends_stream(event):
                            return
            except httpx.TransportError as exc:
                now = time.monotonic()
                failing_since = failing_since or now
                if now - failing_since > self._give_up_seconds:
                    raise base.Unreachable(f"lost {self.where} and could not reconnect for "
                                           f"{self._give_up_seconds:.0f} s: {exc or type(exc).__name__}",
                                           f"Resume with `agentrun logs {name} -n {namespace} -f --since-id "
                                           f"{cursor or streams.START}` once it is back.") from exc
            if not follow and loop.time() - started > self._snapshot_seconds:
                return
            await asyncio.sleep(0.5 if failing_since is None else 1.0)


async def _frames(response: httpx.Response) -> AsyncIterator[base.Event]:
    """``(id, event)`` for each SSE event of a response; comments (``: ping``) are skipped."""
    entry_id: str | None = None
    data: list[str] = []
    kind: str | None = None
    async for line in response.aiter_lines():
        if line == "":
            if data:
                try:
                    event = json.loads("\n".join(data))
                except ValueError:
                    event = {"type": kind or "unknown", "data": "\n".join(data)}
                if isinstance(event, dict):
                    event.setdefault("type", kind)
                    yield entry_id, event
            entry_id, data, kind = None, [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "id":
            entry_id = value
        elif field == "event":
            kind = value
        elif field == "data":
            data.append(value)
