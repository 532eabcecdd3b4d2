"""RBAC proven by recorded calls: the chart grants exactly what the operator and workers use.

The emulator records every API request with the caller's User-Agent (kopf and
``agentrun-operator`` for the operator, ``agentrun-worker`` for workers). This module runs
last in the end-to-end session (the file name sorts last), so the record holds every call of
every scenario before it; it also runs a scenario of its own so it proves something when run
alone. Both directions are checked against ``helm template``'s rendered Roles:
every call is allowed, and every granted verb is used by some call.
"""

from __future__ import annotations

import pathlib
import subprocess
from collections.abc import Iterable
from typing import Any

import pytest
import yaml

from agentrun import binaries
from tests.e2e import harness

pytestmark = pytest.mark.e2e
ROOT = pathlib.Path(__file__).resolve().parents[2]

CALLERS = {"operator": ("kopf/", "agentrun-operator/"), "worker": ("agentrun-worker/",)}
SERVICE_ACCOUNT_SUFFIX = {"operator": "-operator", "worker": "-worker"}


def rendered_rules(component: str) -> list[dict[str, Any]]:
    """The rules bound to the component's ServiceAccount in the default rendering."""
    out = subprocess.run([str(binaries.helm()), "template", "agentrun", str(ROOT / "charts" / "agentrun")],
                         capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    accounts = [d["metadata"]["name"] for d in docs if d["kind"] == "ServiceAccount"
                and d["metadata"]["name"].endswith(SERVICE_ACCOUNT_SUFFIX[component])]
    assert len(accounts) == 1, f"one ServiceAccount for the {component}: {accounts}"
    roles = {(d["kind"], d["metadata"]["name"]): d.get("rules", []) for d in docs
             if d["kind"] in ("ClusterRole", "Role")}
    rules: list[dict[str, Any]] = []
    for binding in (d for d in docs if d["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        if any(s.get("kind") == "ServiceAccount" and s.get("name") == accounts[0] for s in binding.get("subjects", [])):
            rules.extend(roles[(binding["roleRef"]["kind"], binding["roleRef"]["name"])])
    assert rules, f"no rules bound to {accounts[0]}"
    return rules


def allows(rules: Iterable[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        (group in r.get("apiGroups", []) or "*" in r.get("apiGroups", []))
        and (resource in r.get("resources", []) or "*" in r.get("resources", []))
        and (verb in r.get("verbs", []) or "*" in r.get("verbs", []))
        for r in rules
    )


def calls(bed: harness.Bed, component: str) -> set[tuple[str, str, str]]:
    prefixes = CALLERS[component]
    return {(a.group, a.rbac_resource, a.verb) for a in list(bed.emulator.emulator.audit)
            if a.resource and a.user_agent.startswith(prefixes)}


def test_the_chart_grants_exactly_what_the_operator_and_workers_call(
    bed: harness.Bed, operator: Any, namespace: str
) -> None:
    # A scenario of its own: runs whose input comes from a ConfigMap and a Secret.
    bed.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "prompt", "namespace": namespace},
                "data": {"text": "hello from a ConfigMap"}})
    bed.start_worker(f"agentrun.{namespace}.default")
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                "metadata": {"name": "rbac", "namespace": namespace},
                "spec": {"inputFrom": {"configMapKeyRef": {"name": "prompt", "key": "text"}},
                         "agent": {"model": "scripted"}}})
    status = bed.wait_phase(namespace, "rbac", "Succeeded", "Failed")["status"]
    assert status["result"] == "You said: hello from a ConfigMap"
    bed.create({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "prompt", "namespace": namespace},
                "stringData": {"text": "hello from a Secret"}})
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                "metadata": {"name": "rbac-secret", "namespace": namespace},
                "spec": {"inputFrom": {"secretKeyRef": {"name": "prompt", "key": "text"}},
                         "agent": {"model": "scripted"}}})
    status = bed.wait_phase(namespace, "rbac-secret", "Succeeded", "Failed")["status"]
    assert status.get("result") == "You said: hello from a Secret", (status.get("reason"), status.get("message"))
    # a run of an AgentWorkflow, which the operator resolves into the message
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentWorkflow",
                "metadata": {"name": "rbac", "namespace": namespace},
                "spec": {"agent": {"model": "scripted"}, "steps": [{"name": "one", "prompt": "{{input}} step"}]}})
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                "metadata": {"name": "rbac-workflow", "namespace": namespace},
                "spec": {"input": "hello from a workflow", "workflowRef": {"name": "rbac"}}})
    status = bed.wait_phase(namespace, "rbac-workflow", "Succeeded", "Failed")["status"]
    assert status.get("result") == "You said: hello from a workflow step", (status.get("reason"), status.get("message"))
    # a finished run deleted after its TTL, and a pool whose Deployment is created and scaled
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                "metadata": {"name": "rbac-ttl", "namespace": namespace},
                "spec": {"input": "bye", "agent": {"model": "scripted"}, "ttlSecondsAfterFinished": 0}})
    harness.wait_until(lambda: not any(o["metadata"]["name"] == "rbac-ttl" for o in bed.emulator.list(
        "agentrun.io/v1alpha1", "agentruns", namespace)), 30, "the finished run to be deleted after its TTL")
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "WorkerPool",
                "metadata": {"name": "scaled", "namespace": namespace}, "spec": {"minReplicas": 0, "maxReplicas": 2}})
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                "metadata": {"name": "rbac-scaled", "namespace": namespace},
                "spec": {"input": "hi", "agent": {"model": "scripted"}, "workerPool": "scaled"}})

    def scaled_to_one() -> bool:
        return [d["spec"].get("replicas") for d in bed.emulator.list("apps/v1", "deployments", namespace)
                if d["metadata"]["name"] == "scaled-workers"] == [1]

    harness.wait_until(scaled_to_one, 30, "the pool's Deployment scaled to one replica")

    for component in CALLERS:
        rules = rendered_rules(component)
        made = calls(bed, component)
        assert made, f"no calls recorded for the {component}"
        denied = sorted(c for c in made if not allows(rules, *c))
        assert not denied, f"the chart denies calls the {component} makes: {denied}"
        granted = {(g, res, v) for r in rules for g in r.get("apiGroups", []) for res in r.get("resources", [])
                   for v in r.get("verbs", [])}
        unused = sorted(g for g in granted if g not in made)
        assert not unused, f"the chart grants the {component} what it never calls: {unused}"
