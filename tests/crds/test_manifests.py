"""Manifests through ``agentrun.schema``: the bad corpus is refused naming the field, good ones pass.

Each ``bad/*.yaml`` carries its expectation in its header comments: ``# expect: <field>`` (the
field the API server must name), ``# message: <text>`` (part of what it must say) and
``# why:`` for the reader.
"""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml

from agentrun import schema

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BAD = sorted((HERE / "bad").glob("*.yaml"))
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))


def header(path: pathlib.Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        key, _, value = line.lstrip("# ").partition(":")
        found[key.strip()] = value.strip()
    return found


def check(obj: dict[str, Any]) -> tuple[list[schema.FieldError], str]:
    crd = schema.crd_for(obj["kind"])
    errors = schema.validate(crd, obj)
    return errors, schema.format_errors(obj["kind"], obj["metadata"]["name"], errors)


def test_the_corpus_is_large_enough() -> None:
    assert len(BAD) >= 25
    kinds = {yaml.safe_load(p.read_text())["kind"] for p in BAD}
    assert kinds == {"AgentRun", "WorkerPool", "AgentWorkflow"}


@pytest.mark.parametrize("path", BAD, ids=[p.stem for p in BAD])
def test_bad_manifest_is_refused_naming_the_field(path: pathlib.Path) -> None:
    # Given a manifest with one mistake and the field it is in
    expected = header(path)
    assert expected.get("expect"), f"{path.name} needs a '# expect: <field>' header"
    # When it is validated
    errors, message = check(yaml.safe_load(path.read_text()))
    # Then it is refused, an error is about that field, and the message names it
    assert errors, f"{path.name} was accepted"
    fields = [e.field for e in errors]
    assert expected["expect"] in fields, message
    assert expected["expect"] in message
    assert message.startswith(f'{yaml.safe_load(path.read_text())["kind"]}.agentrun.io "bad" is invalid: ')
    if "message" in expected:
        about_field = [e.message for e in errors if e.field == expected["expect"]]
        assert any(expected["message"] in m for m in about_field), message


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid(path: pathlib.Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc or not str(doc.get("apiVersion", "")).startswith(f"{schema.GROUP}/"):
            continue
        errors, message = check(doc)
        assert errors == [], message


def test_hello_streams_a_short_scripted_conversation() -> None:
    hello = yaml.safe_load((ROOT / "examples" / "hello.yaml").read_text())
    assert hello["metadata"]["name"] == "hello"
    agent = hello["spec"]["agent"]
    assert agent["model"] == "scripted"
    assert 2 <= len(agent["script"]) <= 3
    words = sum(len(turn["text"].split()) for turn in agent["script"])
    seconds = sum(len(turn["text"].split()) * turn["chunkDelayMs"] for turn in agent["script"]) / 1000
    assert words > 10 and 1.0 <= seconds <= 3.0


def test_agentrun_defaults() -> None:
    # Given the example run, which sets none of the defaulted fields
    hello = yaml.safe_load((ROOT / "examples" / "hello.yaml").read_text())
    # When the API server defaults it
    spec = schema.apply_defaults(schema.crd_for("AgentRun"), hello)["spec"]
    # Then every default is there
    assert spec["workerPool"] == "default"
    assert spec["maxAttempts"] == 3
    assert spec["stop"] is False
    assert spec["agent"]["maxIterations"] == 100
    assert spec["agent"]["enableThinking"] is False
    assert spec["agent"]["enableContextManager"] is True
    assert spec["agent"]["contextWindow"] == 128000
    assert spec["multitaskStrategy"] == "enqueue"
    assert all("chunkDelayMs" in turn for turn in spec["agent"]["script"])
    assert "reasoningEffort" not in spec["agent"] and "timeoutSeconds" not in spec
    # and the manifest itself is left alone
    assert "workerPool" not in hello["spec"]


def test_agentworkflow_defaults() -> None:
    workflow = {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentWorkflow", "metadata": {"name": "w"},
                "spec": {"agent": {"model": "scripted"}, "steps": [{"name": "a", "prompt": "{{input}}"}]}}
    spec = schema.apply_defaults(schema.crd_for("awf"), workflow)["spec"]
    assert spec["executor"] == "deterministic"
    assert spec["agent"]["maxIterations"] == 100
    assert spec["steps"] == [{"name": "a", "prompt": "{{input}}"}]  # a step inherits, it gets no defaults


def test_workerpool_defaults_from_nothing() -> None:
    pool = {"apiVersion": "agentrun.io/v1alpha1", "kind": "WorkerPool", "metadata": {"name": "p"}}
    spec = schema.apply_defaults(schema.crd_for("WorkerPool"), pool)["spec"]
    assert spec == {
        "processes": 1,
        "threads": 8,
        "minReplicas": 1,
        "maxReplicas": 10,
        "runsPerReplica": 8,
        "scaleDownStabilizationSeconds": 300,
        "autoscaling": {"mode": "operator"},
    }
    assert schema.validate(schema.crd_for("WorkerPool"), pool) == []


def test_the_example_pool_spells_out_the_defaults() -> None:
    pool = yaml.safe_load((ROOT / "examples" / "workerpool-default.yaml").read_text())
    crd = schema.crd_for("WorkerPool")
    empty = {**pool, "spec": {}}
    assert schema.apply_defaults(crd, pool)["spec"] == schema.apply_defaults(crd, empty)["spec"]


GOOD: dict[str, dict[str, Any]] = {
    "agent-ref-with-secret-input": {
        "kind": "AgentRun",
        "spec": {"inputFrom": {"secretKeyRef": {"name": "prompts", "key": "task.txt"}}, "agentRef": {"name": "helper"},
                 "threadId": "thread-42", "timeoutSeconds": 600, "ttlSecondsAfterFinished": 0, "maxAttempts": 1},
    },
    "workflow": {
        "kind": "AgentRun",
        "spec": {"input": "review PR 7", "workflowRef": {"name": "review"}, "workerPool": "gpu-a"},
    },
    "full-agent": {
        "kind": "AgentRun",
        "spec": {
            "input": "hi",
            "stop": True,
            "agent": {
                "model": "claude-sonnet-4",
                "systemPrompt": "Be brief.",
                "tools": ["web_search", "browser"],
                "mcpServers": [
                    {"name": "files", "transport": "stdio", "command": "mcp-files", "args": ["--root", "/data"]},
                    {"name": "search", "transport": "http", "url": "https://mcp.example.com/sse"},
                ],
                "maxIterations": 10000,
                "enableThinking": True,
                "reasoningEffort": "high",
                "enableContextManager": False,
                "maxTokens": 200000,
            },
        },
    },
    "with-images": {
        "kind": "AgentRun",
        "spec": {
            "inputParts": [
                {"type": "text", "text": "What is in these pictures?"},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png", "detail": "low"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
            ],
            "multitaskStrategy": "interrupt",
            "agent": {"model": "openai/gpt-4o", "contextWindow": 8192},
        },
    },
    "failing-script": {
        "kind": "AgentRun",
        "spec": {"input": "hi", "agent": {"model": "scripted", "script": [{"text": "one"}, {"fail": "overloaded"}]}},
    },
    "with-status": {
        "kind": "AgentRun",
        "spec": {"input": "hi", "agent": {"model": "scripted"}},
        "status": {
            "phase": "Succeeded", "attempt": 1, "observedGeneration": 1, "reason": "Completed", "message": "",
            "queuedAt": "2025-01-01T10:00:00.123456Z", "startedAt": "2025-01-01T10:00:01Z",
            "finishedAt": "2025-01-01T10:00:03Z", "lastHeartbeatTime": "2025-01-01T10:00:02+00:00",
            "iterations": 2, "usage": {"inputTokens": 10, "outputTokens": 20, "totalTokens": 30},
            "streamKey": "agentrun:{u}:stream", "threadId": "u", "result": "done", "workerInstance": "w-1",
            "conditions": [{"type": "Complete", "status": "True", "reason": "Completed", "message": "",
                            "lastTransitionTime": "2025-01-01T10:00:03Z", "observedGeneration": 1}],
        },
    },
    "workflow-deterministic": {
        "kind": "AgentWorkflow",
        "spec": {
            "description": "Write a short article.",
            "agent": {"model": "openai/gpt-4o-mini", "systemPrompt": "You write well.", "tools": ["web_search"],
                      "maxTokens": 100000},
            "steps": [
                {"name": "outline", "description": "Plan the article.", "prompt": "Outline: {{input}}"},
                {"name": "draft", "prompt": "Write it from {{ steps.outline.output }}", "model": "openai/gpt-4o",
                 "systemPrompt": "You are a writer.", "tools": [], "maxIterations": 5},
                {"name": "check", "prompt": "Check {{steps.draft.output}} against {{input}}", "model": "scripted",
                 "script": [{"text": "fine"}]},
            ],
        },
    },
    "workflow-agent": {
        "kind": "AgentWorkflow",
        "spec": {"executor": "agent", "agent": {"model": "scripted", "script": [{"text": "done"}]},
                 "steps": [{"name": "a", "prompt": "{{input}}", "script": [{"text": "a"}]}]},
    },
    "pool-with-credentials": {
        "kind": "WorkerPool",
        "spec": {
            "image": "ghcr.io/agentrun/agentrun:0.1.0",
            "imagePullPolicy": "IfNotPresent",
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"nvidia.com/gpu": 1}},
            "env": [{"name": "OPENAI_API_KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "openai"}}}],
            "envFrom": [{"secretRef": {"name": "model-keys"}}],
            "minReplicas": 0,
            "maxReplicas": 1,
            "autoscaling": {"mode": "keda"},
        },
        "status": {"queue": "agentrun.default.p", "desiredReplicas": 0, "replicas": 0, "readyReplicas": 0,
                   "queued": 0, "running": 0, "observedGeneration": 3},
    },
}


@pytest.mark.parametrize("name", sorted(GOOD))
def test_good_manifest_passes_and_keeps_its_fields(name: str) -> None:
    obj = {"apiVersion": "agentrun.io/v1alpha1", "metadata": {"name": name, "namespace": "default"}, **GOOD[name]}
    errors, message = check(obj)
    assert errors == [], message
    defaulted = schema.apply_defaults(schema.crd_for(obj["kind"]), obj)
    assert contains(defaulted, obj)  # defaulting only adds; preserved fields (resources, env) stay whole


def contains(big: Any, small: Any) -> bool:
    """``big`` has everything ``small`` has (dicts may have more keys)."""
    if isinstance(small, dict):
        return isinstance(big, dict) and all(k in big and contains(big[k], v) for k, v in small.items())
    if isinstance(small, list):
        return isinstance(big, list) and len(big) == len(small) and all(map(contains, big, small))
    return big == small and type(big) is type(small)
