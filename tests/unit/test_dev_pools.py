"""How ``agentrun dev`` serves WorkerPools (``agentrun_worker.local``): pure decisions, no API."""

from __future__ import annotations

import json
import os
import pathlib
import sys
from typing import Any

import pytest
from agentrun_worker import config, local, mcp


def pool(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "tools", "namespace": "team", "resourceVersion": "7"}, "spec": spec}


STORE = {("Secret", "team", "search"): {"token": "s3cret"}, ("ConfigMap", "team", "settings"): {"region": "eu"}}


def read(kind: str, namespace: str, name: str, key: str) -> str | None:
    data = STORE.get((kind, namespace, name))
    if data is None:
        return None
    return json.dumps(data) if not key else data.get(key)


def test_env_comes_from_values_secrets_and_configmaps() -> None:
    env, problems = local.resolve_env(pool(
        env=[{"name": "PLAIN", "value": "1"},
             {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "search", "key": "token"}}},
             {"name": "REGION", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "region"}}}],
        envFrom=[{"secretRef": {"name": "search"}, "prefix": "S_"}]), read)
    assert env == {"PLAIN": "1", "TOKEN": "s3cret", "REGION": "eu", "S_token": "s3cret"}
    assert problems == []


def test_what_cannot_be_resolved_is_reported_and_optional_refs_are_not() -> None:
    env, problems = local.resolve_env(pool(env=[
        {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "token"}}},
        {"name": "MAYBE", "valueFrom": {"secretKeyRef": {"name": "missing", "key": "k", "optional": True}}},
        {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]), read)
    assert env == {}
    assert problems == ["env TOKEN: key 'token' of Secret 'missing' not found",
                        "env POD: only value, secretKeyRef and configMapKeyRef work in agentrun dev"]


def test_a_pools_settings_carry_its_mcp_servers_and_agentrun_variables() -> None:
    servers = [{"name": "notes", "transport": "stdio", "command": "agentrun-demo-tools"}]
    settings = local.pool_settings(config.WorkerSettings(), pool(mcpServers=servers),
                                   {"AGENTRUN_MODEL_MAX_RETRIES": "1", "OTHER": "x"})
    assert settings.mcp_servers == servers
    assert settings.model_max_retries == 1


@pytest.mark.parametrize(("running", "pools", "unresolved", "expected"), [
    ({}, {"q1": "1"}, set(), local.Plan(start=["q1"], refresh=[], stop=[])),
    ({"q1": "1"}, {"q1": "1"}, set(), local.Plan(start=[], refresh=[], stop=[])),
    ({"q1": "1"}, {"q1": "2"}, set(), local.Plan(start=[], refresh=["q1"], stop=[])),
    ({"q1": "1"}, {"q1": "1"}, {"q1"}, local.Plan(start=[], refresh=["q1"], stop=[])),
    ({"q1": "1"}, {}, set(), local.Plan(start=[], refresh=[], stop=["q1"])),
])
def test_plan(running: dict[str, str], pools: dict[str, str], unresolved: set[str], expected: local.Plan) -> None:
    assert local.plan(running, pools, unresolved) == expected


def test_an_mcp_command_is_found_in_the_virtualenv_first_even_when_it_is_not_on_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    found = mcp.resolve_command("agentrun-demo-tools", "notes")
    assert found == str(pathlib.Path(sys.executable).parent / "agentrun-demo-tools")
    assert os.access(found, os.X_OK)


def test_an_mcp_command_found_nowhere_is_refused_saying_where_it_was_looked_for() -> None:
    with pytest.raises(mcp.ServerUnavailable, match="not found in the worker's virtualenv"):
        mcp.resolve_command("no-such-mcp-server-anywhere", "nope")
