"""Runs straight from the Kubernetes API, streams straight from Redis.

The CLI's default (no ``--gateway``): kubectl's conventions for the cluster (``KUBECONFIG``,
``~/.kube/config`` or the in-cluster service account; ``--context``) and
``AGENTRUN_REDIS_URL`` for the streams, which only ``logs`` needs. Connection failures are
turned into :class:`~agentrun.clients.base.Unreachable` naming the kubeconfig, context and
server that were tried.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx2  # lightkube's HTTP layer: its transport errors mean the API is unreachable
import lightkube
import lightkube.codecs
import lightkube.config.kubeconfig
import lightkube.core.exceptions
import lightkube.types
import redis.asyncio as aioredis
import redis.exceptions as redis_errors

from agentrun import keys, kube, phases, streams
from agentrun.clients import base

DEV_HINT = "Locally, start `agentrun dev` and export what it prints; or pick another context with --context."


def describe(kubeconfig: str | None, context: str | None) -> str:
    """Which kubeconfig, context and server a client built from these would use."""
    path = kubeconfig or os.environ.get("KUBECONFIG") or lightkube.config.kubeconfig.DEFAULT_KUBECONFIG
    try:
        config = lightkube.config.kubeconfig.KubeConfig.from_file(path)
        single = config.get(context_name=context)
    except (lightkube.core.exceptions.ConfigError, OSError, KeyError, TypeError, ValueError):
        return f"kubeconfig {path}" + (f", context {context}" if context else "")
    assert single is not None
    return f"{single.cluster.server} (kubeconfig {path}, context {single.context_name})"


def contexts(kubeconfig: str | None) -> list[str]:
    path = kubeconfig or os.environ.get("KUBECONFIG") or lightkube.config.kubeconfig.DEFAULT_KUBECONFIG
    try:
        return sorted(lightkube.config.kubeconfig.KubeConfig.from_file(path).contexts)
    except (lightkube.core.exceptions.ConfigError, OSError, KeyError, TypeError, ValueError):
        return []


class ClusterClient(base.Client):
    def __init__(self, kubeconfig: str | None, context: str | None, redis_url: str | None) -> None:
        self.where = f"the Kubernetes API at {describe(kubeconfig, context)}"
        try:
            self._api = kube.client(kubeconfig, context=context, user_agent="agentrun-cli")
        except lightkube.core.exceptions.ConfigError as exc:
            known = contexts(kubeconfig)
            hint = (f"Contexts in the kubeconfig: {', '.join(known)}." if context and known else
                    "Set KUBECONFIG or --kubeconfig. " + DEV_HINT)
            raise base.Unreachable(f"no usable Kubernetes configuration: {exc}", hint) from exc
        self._redis_url = redis_url
        self._redis: aioredis.Redis | None = None
        self.reconnect_seconds = 60.0
        """How long ``events`` tries to get a lost Redis back before it gives up (a restart or a
        failover takes seconds; a minute of nothing is an outage to report)."""

    async def close(self) -> None:
        await self._api.close()
        if self._redis is not None:
            await self._redis.aclose()

    async def _call(self, coro: Any) -> Any:
        """Await an API call, translating an unreachable server into :class:`base.Unreachable`."""
        try:
            return await coro
        except (httpx2.TransportError, OSError) as exc:
            raise base.Unreachable(f"cannot reach {self.where}: {exc or type(exc).__name__}", DEV_HINT) from exc
        except kube.ApiError as exc:
            code = exc.status.code
            if code in (401, 403):
                raise base.Unauthorized(f"the Kubernetes API refused the request: {exc.status.message}",
                                        "Check the credentials of your kubeconfig context.") from exc
            if code == 409:
                raise base.Invalid(str(exc.status.message or exc), "Pick another metadata.name, or use "
                                   "metadata.generateName for a fresh name each time.") from exc
            if code in (400, 422):
                raise base.Invalid(str(exc.status.message or exc)) from exc
            raise

    async def create(self, manifest: dict[str, Any]) -> dict[str, Any]:
        return kube.to_dict(await self._call(self._api.create(lightkube.codecs.from_dict(manifest))))

    async def apply(self, manifest: dict[str, Any]) -> tuple[dict[str, Any], str]:
        resource = {"WorkerPool": kube.WorkerPool, "AgentWorkflow": kube.AgentWorkflow}.get(str(manifest.get("kind")))
        if resource is None:
            return await super().apply(manifest)
        meta = manifest["metadata"]
        try:
            current = kube.to_dict(await self._call(self._api.get(resource, meta["name"], namespace=meta["namespace"])))
        except kube.ApiError as exc:
            if not kube.is_not_found(exc):
                raise
            return await self.create(manifest), "created"
        # the file's spec, whole (as kubectl apply leaves it when the file is the only writer)
        current["spec"] = manifest.get("spec") or {}
        for field in ("labels", "annotations"):
            if meta.get(field):
                current["metadata"][field] = {**(current["metadata"].get(field) or {}), **meta[field]}
        replaced = await self._call(self._api.replace(lightkube.codecs.from_dict(current)))
        return kube.to_dict(replaced), "configured"

    async def get(self, namespace: str, name: str) -> dict[str, Any]:
        try:
            return kube.to_dict(await self._call(self._api.get(kube.AgentRun, name, namespace=namespace)))
        except kube.ApiError as exc:
            if kube.is_not_found(exc):
                raise base.not_found(namespace, name) from exc
            raise

    async def list_runs(self, namespace: str | None, phase: str | None = None) -> list[dict[str, Any]]:
        async def fetch() -> list[dict[str, Any]]:
            return [kube.to_dict(o) async for o in self._api.list(kube.AgentRun, namespace=namespace or "*")]

        runs: list[dict[str, Any]] = await self._call(fetch())
        return [r for r in runs if phase is None or base.phase_of(r) == phase]

    async def watch(self, namespace: str | None) -> AsyncIterator[dict[str, Any]]:
        iterator = self._api.watch(kube.AgentRun, namespace=namespace or "*").__aiter__()
        while True:
            try:
                _kind, obj = await self._call(iterator.__anext__())
            except StopAsyncIteration:
                return
            yield kube.to_dict(obj)

    async def stop(self, namespace: str, name: str) -> tuple[dict[str, Any], bool]:
        run = await self.get(namespace, name)
        if phases.is_terminal(base.phase_of(run)):
            return run, False
        patch = self._api.patch(kube.AgentRun, name, {"spec": {"stop": True}}, namespace=namespace,
                                patch_type=lightkube.types.PatchType.MERGE)
        try:
            return kube.to_dict(await self._call(patch)), True
        except kube.ApiError as exc:
            if kube.is_not_found(exc):
                raise base.not_found(namespace, name) from exc
            raise

    async def pool_missing(self, namespace: str, pool: str) -> list[str] | None:
        try:
            await self._call(self._api.get(kube.WorkerPool, pool, namespace=namespace))
            return None
        except base.ClientError:
            return None  # no right to read pools: the operator will say so in the run's status
        except kube.ApiError as exc:
            if not kube.is_not_found(exc):
                return None
        pools = [kube.to_dict(p)["metadata"]["name"] async for p in self._api.list(kube.WorkerPool,
                                                                                     namespace=namespace)]
        return sorted(pools)

    def _client(self) -> aioredis.Redis:
        if not self._redis_url:
            raise base.Unreachable("AGENTRUN_REDIS_URL is not set: the run's stream lives in Redis.",
                                   "`agentrun dev` prints the line to export; on a cluster, port-forward its "
                                   "Redis and export AGENTRUN_REDIS_URL, or go through the gateway with --gateway URL.")
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(self._redis_url)
        return self._redis

    async def events(self, run: dict[str, Any], *, last_id: str, follow: bool) -> AsyncIterator[base.Event]:
        client = self._client()
        uid = run["metadata"]["uid"]
        namespace, name = run["metadata"]["namespace"], run["metadata"]["name"]
        try:
            if not follow:
                for entry_id, event in await streams.read_all(client, uid):
                    if last_id == streams.START or streams_after(entry_id, last_id):
                        yield entry_id, event
                return
            await client.ping()  # a wrong URL fails here, at once, blaming the URL
        except _REDIS_DOWN as exc:
            raise base.Unreachable(f"cannot reach Redis at {_safe(self._redis_url)}: {exc}",
                                   "Check AGENTRUN_REDIS_URL, or go through the gateway with --gateway URL.") from exc
        ended: dict[str, Any] = {}

        async def still_going() -> bool:
            try:
                current = await self.get(namespace, name)
            except base.NotFound:
                current = None
            if current is None or current["metadata"].get("uid") != uid:
                ended["event"] = {"type": streams.STATUS, "status": "deleted"}
                return False
            if phases.is_terminal(base.phase_of(current)):
                ended["event"] = base.final_status(current)
                return False
            return True

        # Once connected, a lost connection (Redis restarted, a network blip) is waited out
        # with backoff and the stream resumed after the last event yielded; the caller hears
        # of it through ``connection`` events, and of what Redis lost meanwhile.
        cursor, lost_at, backoff = last_id, None, RECONNECT_FIRST_SECONDS
        while True:
            try:
                if lost_at is not None:
                    await client.ping()
                    gap = await _what_was_missed(client, uid, cursor)
                    yield None, base.connection_event(
                        "resumed", f"reconnected to Redis after {time.monotonic() - lost_at:.1f} s; {gap}")
                    lost_at, backoff = None, RECONNECT_FIRST_SECONDS
                async for entry_id, event in streams.follow(client, uid, last_id=cursor, block_ms=2_000,
                                                            on_idle=still_going):
                    cursor = entry_id
                    yield entry_id, event
                break
            except _REDIS_DOWN as exc:
                now = time.monotonic()
                if lost_at is None:
                    lost_at = now
                    where = "before any event" if cursor == streams.START else f"after event {cursor}"
                    yield None, base.connection_event(
                        "lost", f"lost the connection to Redis at {_safe(self._redis_url)} {where} "
                                f"({type(exc).__name__}: {exc}); reconnecting for up to "
                                f"{self.reconnect_seconds:.0f} s (resume later with --since-id {cursor})")
                elif now - lost_at > self.reconnect_seconds:
                    raise base.Unreachable(
                        f"lost Redis at {_safe(self._redis_url)} and could not reconnect for "
                        f"{self.reconnect_seconds:.0f} s: {exc}",
                        f"Resume with `agentrun logs {name} -n {namespace} -f --since-id {cursor}` once Redis "
                        "is back.") from exc
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_SECONDS)
        if "event" in ended:  # ended (or was deleted) without a terminal event in its stream
            yield None, ended["event"]


_REDIS_DOWN = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)

RECONNECT_FIRST_SECONDS = 0.2
"""First wait before reconnecting to Redis, doubled after each failure."""
RECONNECT_MAX_SECONDS = 2.0
"""Longest wait between two reconnection attempts: a restarted Redis is noticed within it."""


async def _what_was_missed(client: aioredis.Redis, uid: str, cursor: str) -> str:
    """What a follower after ``cursor`` missed while Redis was away: nothing, when the entry at
    the cursor is still there; else Redis came back without (part of) the stream."""
    key = keys.stream(uid)
    if cursor != streams.START and await client.xrange(key, cursor, cursor):
        return "nothing was missed"
    first: Any = await client.xrange(key, "-", "+", count=1)
    if not first:
        return ("Redis came back without this run's stream (it restarted empty): events written after "
                f"{cursor if cursor != streams.START else 'the start'} and before the restart are lost; "
                "following what comes next")
    first_id = first[0][0].decode() if isinstance(first[0][0], bytes) else str(first[0][0])
    if cursor == streams.START:
        return "nothing was missed"
    return (f"Redis restarted without this run's stream: events written after {cursor} and before the "
            f"restart, if there were any, are lost; following from {first_id}")


def streams_after(entry_id: str, last_id: str) -> bool:
    """Whether stream entry ``entry_id`` comes after ``last_id`` (ids compare as number pairs)."""
    def key(value: str) -> tuple[int, int]:
        ms, _, seq = value.partition("-")
        return int(ms), int(seq or 0)

    return key(entry_id) > key(last_id)


def _safe(url: str | None) -> str:
    """A Redis URL without its password, for messages."""
    if not url or "@" not in url:
        return str(url)
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.rpartition('@')[2]}"
