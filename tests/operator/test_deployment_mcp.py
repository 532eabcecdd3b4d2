"""The pool's standard MCP servers reach its workers through the Deployment's environment."""

from __future__ import annotations

import json

from agentrun_operator import deployments
from agentrun_worker import config as worker_config

from tests.operator.pools import SETTINGS, container, pool

SERVERS = [{"name": "search", "transport": "http", "url": "https://mcp.example.com/mcp",
            "headersFrom": [{"name": "Authorization", "fromEnv": "SEARCH_TOKEN", "prefix": "Bearer "}]}]


def test_the_pool_mcp_servers_become_the_worker_setting_before_the_pool_env() -> None:
    # Given a pool with a standard server whose token is a variable of the pool's env
    token = {"name": "SEARCH_TOKEN", "valueFrom": {"secretKeyRef": {"name": "search", "key": "token"}}}
    manifest = deployments.deployment_for(pool(mcpServers=SERVERS, env=[token]), SETTINGS)
    # Then the workers get the servers as JSON, and the pool's env after it (it may override)
    env = container(manifest)["env"]
    names = [e["name"] for e in env]
    assert names.index("AGENTRUN_MCP_SERVERS") < names.index("SEARCH_TOKEN") == len(names) - 1
    value = next(e["value"] for e in env if e["name"] == "AGENTRUN_MCP_SERVERS")
    # And the worker's settings read exactly the pool's list back
    assert json.loads(value) == SERVERS
    assert worker_config.WorkerSettings.model_validate({"mcp_servers": json.loads(value)}).mcp_servers == SERVERS


def test_a_pool_without_mcp_servers_sets_no_variable() -> None:
    env = container(deployments.deployment_for(pool(), SETTINGS))["env"]
    assert "AGENTRUN_MCP_SERVERS" not in [e["name"] for e in env]
