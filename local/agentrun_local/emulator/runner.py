"""Run the emulated API server on a TCP port, in its own thread and event loop.

:class:`EmulatorServer` is what the test suite and ``agentrun dev`` start: it serves an
:class:`.apiserver.Emulator` through kmock's ``Server`` (aiohttp's raw test server on a real
port), writes a kubeconfig for kubectl, kopf and lightkube, and offers thread-safe ``get`` and
``list`` for assertions from synchronous code or from another event loop.
"""

from __future__ import annotations

import asyncio
import builtins
import concurrent.futures
import os
import pathlib
import threading
from collections.abc import Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Self, TypeVar

import kmock
import yaml

from agentrun_local.emulator import apiserver, validation

T = TypeVar("T")

_START_TIMEOUT = 30.0
_CALL_TIMEOUT = 30.0


class _Listener(kmock.Server):
    """kmock's ``Server`` without its process-wide DNS interception.

    kmock patches aiohttp's resolver for the lifetime of every server, which breaks when two
    servers stop in another order than they started; the emulator is addressed by IP, so
    the interception is not needed. Binding, the client session and the handler's server
    list are kmock's.
    """

    async def __aenter__(self) -> Self:
        if self._managed_server is not None:
            raise RuntimeError("The server can be started only once.")
        self._managed_server = self._server_cls(self.handler, host=self._host, port=self._port)
        await self._managed_server.__aenter__()
        self._managed_client = self._client_fct(self._managed_server.make_url("/"))
        if self.user_agent:
            self._managed_client.headers.update({"User-Agent": self.user_agent})
        await self._managed_client.__aenter__()
        self.handler.servers.append(self)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc_value: BaseException | None,
                        traceback: TracebackType | None) -> None:
        self.handler.servers.remove(self)
        assert self._managed_client is not None and self._managed_server is not None
        await self._managed_client.__aexit__(exc_type, exc_value, traceback)
        await self._managed_server.__aexit__(exc_type, exc_value, traceback)
        self._managed_client = None
        self._managed_server = None


class EmulatorServer:
    """The emulator on ``host:port`` (0: any free port), served from a background thread."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, crds: Iterable[Mapping[str, Any]] = (),
                 admission: validation.Admission | None = None, history_limit: int | None = None) -> None:
        self.host = host
        self.port = port
        self.emulator = apiserver.Emulator(crds=crds, admission=admission, history_limit=history_limit)
        self._url: str | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` once started."""
        if self._url is None:
            raise RuntimeError("the emulator is not started")
        return self._url

    def start(self) -> None:
        """Start serving; returns once the port listens (raises what prevented it)."""
        if self._thread is not None or self._url is not None:
            raise RuntimeError("an EmulatorServer can be started only once")
        self._thread = threading.Thread(target=self._run, name="agentrun-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT):
            raise RuntimeError(f"the emulator did not start within {_START_TIMEOUT} s")
        if self._failure is not None:
            self._thread.join()
            raise RuntimeError(f"the emulator could not listen on {self.host}:{self.port}") from self._failure

    def stop(self) -> None:
        """End all watches, stop listening and join the thread. Idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        if not loop.is_closed():
            try:
                loop.call_soon_threadsafe(self._begin_stop)
            except RuntimeError:
                pass  # the loop has just finished
        thread.join(_START_TIMEOUT)
        self._thread = None
        self._loop = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc_value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.stop()

    def _begin_stop(self) -> None:
        self.emulator.close()
        if self._stopping is not None:
            self._stopping.set()

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(); after startup, only logged by asyncio
            self._failure = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        async with self.emulator, _Listener(self.emulator, host=self.host, port=self.port or None) as listener:
            reachable = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host  # noqa: S104
            self._url = f"http://{reachable}:{listener.port}"
            self._ready.set()
            await self._stopping.wait()

    # -- thread-safe helpers ---------------------------------------------------------------------

    def call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the emulator's loop (between requests) and return its result."""
        loop = self._loop
        if loop is None or self._thread is None:
            return fn()  # not serving: nothing runs concurrently

        async def invoke() -> T:
            return fn()

        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(invoke(), loop)
        return future.result(_CALL_TIMEOUT)

    def get(self, group_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """One object (a copy), e.g. ``get("agentrun.io/v1alpha1", "agentruns", "default", "x")``."""
        return self.call(lambda: self.emulator.get_object(group_version, plural, namespace, name))

    def list(self, group_version: str, plural: str, namespace: str | None = None) -> builtins.list[dict[str, Any]]:
        """Objects (copies) of a resource, in one namespace or all."""
        return self.call(lambda: self.emulator.list_objects(group_version, plural, namespace))

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create an object as a POST would (namespace "default" when absent)."""
        return self.call(lambda: self.emulator.create_object(obj))

    def write_kubeconfig(self, path: str | os.PathLike[str]) -> pathlib.Path:
        """A kubeconfig with one cluster, user (no credentials) and context (namespace default)."""
        target = pathlib.Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        name = "agentrun-emulator"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": name, "cluster": {"server": self.url}}],
            "users": [{"name": name, "user": {}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": name, "namespace": "default"}}],
            "current-context": name,
            "preferences": {},
        }
        target.write_text(yaml.safe_dump(config, sort_keys=False))
        return target
