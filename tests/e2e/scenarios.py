"""What several end-to-end modules build and read: run manifests, scripts and stream events."""

from __future__ import annotations

import asyncio
import os
import pathlib
import sys
from typing import Any

import redis.asyncio as aioredis
import yaml

from agentrun import streams
from tests.e2e import harness
from tests.worker import mcp_server

SCRIPT = [
    {"text": "Hello from the scripted model.", "chunkDelayMs": 5},
    {"text": "Second turn, then done.", "chunkDelayMs": 5},
]
WORDS = 40
SLOW_TEXT = " ".join(f"word{i}" for i in range(WORDS))
SLOW = [{"text": SLOW_TEXT, "chunkDelayMs": 100}]  # ~4 s per attempt
# The test MCP server (tests/worker/mcp_server.py) that stdio servers of the runs start.
SERVER = str(pathlib.Path(mcp_server.__file__).resolve())
LEASE_TTL = 3.0
# Workers that renew a 3 s lease every second, so a lost worker is noticed in seconds.
WORKER_ENV = {"AGENTRUN_LEASE_TTL_SECONDS": str(LEASE_TTL), "AGENTRUN_LEASE_RENEW_SECONDS": "1"}
# An operator that scans every second (the ``fast_operator`` fixture), so recovery is measured in seconds.
SCAN_INTERVAL = 1.0
QUEUED_TIMEOUT = 3.0
POOL_MISSING_GRACE = 2.0
OPERATOR_ENV = {"AGENTRUN_SCAN_INTERVAL_SECONDS": str(SCAN_INTERVAL),
                "AGENTRUN_QUEUED_TIMEOUT_SECONDS": str(QUEUED_TIMEOUT),
                "AGENTRUN_POOL_MISSING_GRACE_SECONDS": str(POOL_MISSING_GRACE)}


def agentrun(namespace: str, name: str, script: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    """An AgentRun of the scripted model (``SCRIPT`` unless ``script`` is given)."""
    agent = {"model": "scripted", "script": SCRIPT if script is None else script}
    body: dict[str, Any] = {"input": "hi", "agent": agent}
    body.update(spec)
    return {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
            "metadata": {"name": name, "namespace": namespace}, "spec": body}


def manifest(tmp_path: pathlib.Path, name: str, namespace: str, script: list[dict[str, Any]], **spec: Any) -> str:
    """A file holding an AgentRun of the scripted model, as a user would write it for kubectl or the CLI."""
    doc = {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun", "metadata": {"name": name},
           "spec": {"input": "hi", "agent": {"model": "scripted", "script": script}, **spec}}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return str(path)


def redis_call(url: str, call: Any) -> Any:
    async def go() -> Any:
        client = aioredis.Redis.from_url(url)
        try:
            return await call(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def stream_events(redis_url: str, uid: str) -> list[dict[str, Any]]:
    """Every event of the run's stream, in order."""
    return [event for _, event in redis_call(redis_url, lambda client: streams.read_all(client, uid))]


def final_events(redis_url: str, uid: str, timeout: float = 10) -> list[dict[str, Any]]:
    """Every event of an ended run's stream, once its terminal event is there: a run ends
    database, resource, then stream, so a reader that saw the phase may be a moment ahead."""
    def ended() -> list[dict[str, Any]] | None:
        events = stream_events(redis_url, uid)
        return events if events and streams.is_terminal(events[-1]) else None

    return harness.wait_until(ended, timeout, f"the terminal event of run {uid}")  # type: ignore[no-any-return]


def events_of(bed: harness.Bed, uid: str) -> list[dict[str, Any]]:
    return stream_events(bed.redis_url, uid)


def terminal_event(bed: harness.Bed, uid: str, timeout: float = 10) -> dict[str, Any]:
    """The run's terminal stream event, waited for (see :func:`final_events`)."""
    return final_events(bed.redis_url, uid, timeout)[-1]


def streaming(bed: harness.Bed, uid: str) -> bool:
    return any(e["type"] == streams.ASSISTANT for e in events_of(bed, uid))


def scrape(proc: harness.Proc) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of the operator's ``/metrics`` as ``(name, labels) -> value``."""
    import httpx
    import prometheus_client.parser

    assert proc.metrics_url is not None
    text = httpx.get(proc.metrics_url, timeout=5).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in prometheus_client.parser.text_string_to_metric_families(text) for s in family.samples}


def families(proc: harness.Proc) -> set[str]:
    import httpx
    import prometheus_client.parser

    assert proc.metrics_url is not None
    text = httpx.get(proc.metrics_url, timeout=5).text
    return {family.name for family in prometheus_client.parser.text_string_to_metric_families(text)}


def sample(proc: harness.Proc, name: str, **labels: str) -> float | None:
    return scrape(proc).get((name, frozenset(labels.items())))


def warning_events(bed: harness.Bed, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in bed.emulator.list("v1", "events", namespace)
            if e.get("involvedObject", {}).get("name") == name and e.get("reason") == reason
            and e.get("type") == "Warning"]


def stdio(tag: str, **extra: Any) -> dict[str, Any]:
    """A stdio MCP server entry running the test server, its processes findable by ``tag``."""
    return {"name": "testkit", "transport": "stdio", "command": sys.executable, "args": [SERVER, "--tag", tag],
            **extra}


def server_processes(tag: str) -> list[pathlib.Path]:
    """The /proc entries of the processes whose command line holds ``tag``."""
    found = []
    for proc in pathlib.Path("/proc").glob("[0-9]*"):
        try:
            if tag in (proc / "cmdline").read_bytes().decode(errors="replace"):
                found.append(proc)
        except OSError:
            continue
    return found


def local_env(tmp_path: pathlib.Path) -> dict[str, str]:
    """The environment of an `agentrun dev` or `demo` started as a user would: none of the beds' settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRUN_") and k != "KUBECONFIG"}
    env.update(AGENTRUN_STATE_DIR=str(tmp_path / "state"), KUBECACHEDIR=str(tmp_path / "kubecache"),
               PYTHONUNBUFFERED="1")
    return env
