"""RBAC proven by recorded calls: what the operator and workers call against what the chart grants.

The emulator records every API request with the caller's User-Agent (kopf and
``agentrun-operator`` for the operator, ``agentrun-worker`` for workers). Each end-to-end
session's bed hands its record to this module when it ends (``record``); with pytest-xdist
every worker process has a bed of its own and sends its record to the controller
(``workeroutput``). At the end of the run the union is checked against ``helm template``'s
rendered Roles, both ways: every call is allowed, and, when every end-to-end module ran with
nothing deselected, every granted verb is used by some call. No module has to run last.
"""

from __future__ import annotations

import functools
import pathlib
import subprocess
from collections.abc import Iterable
from typing import Any

import pytest
import yaml

from agentrun import binaries

ROOT = pathlib.Path(__file__).resolve().parents[2]
CALLERS = {"operator": ("kopf/", "agentrun-operator/"), "worker": ("agentrun-worker/",)}
SERVICE_ACCOUNT_SUFFIX = {"operator": "-operator", "worker": "-worker"}

Call = tuple[str, str, str, str]  # component, API group, resource (with subresource), verb
CALLS = pytest.StashKey[set[Call]]()
E2E_FILES = pytest.StashKey[set[str]]()


@functools.cache
def rendered_rules(component: str) -> tuple[dict[str, Any], ...]:
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
    return tuple(rules)


def allows(rules: Iterable[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        (group in r.get("apiGroups", []) or "*" in r.get("apiGroups", []))
        and (resource in r.get("resources", []) or "*" in r.get("resources", []))
        and (verb in r.get("verbs", []) or "*" in r.get("verbs", []))
        for r in rules
    )


def calls(emulator: Any) -> set[Call]:
    """Every resource call the emulator recorded from the operator or a worker."""
    made: set[Call] = set()
    for entry in list(emulator.emulator.audit):
        if not entry.resource:
            continue
        for component, prefixes in CALLERS.items():
            if entry.user_agent.startswith(prefixes):
                made.add((component, entry.group, entry.rbac_resource, entry.verb))
    return made


def denied(made: Iterable[Call]) -> list[str]:
    """The calls the chart does not allow."""
    return sorted(f"{component}: {group}/{resource} {verb}" for component, group, resource, verb in made
                  if not allows(rendered_rules(component), group, resource, verb))


def unused(made: Iterable[Call]) -> list[str]:
    """What the chart grants that no recorded call used."""
    used = set(made)
    return sorted(f"{component}: {group}/{resource} {verb}" for component in CALLERS
                  for r in rendered_rules(component) for group in r.get("apiGroups", [])
                  for resource in r.get("resources", []) for verb in r.get("verbs", [])
                  if (component, group, resource, verb) not in used)


# -- the audit across sessions (hooks in tests/conftest.py call these) ------------------------


def record(config: pytest.Config, made: Iterable[Call]) -> None:
    config.stash.setdefault(CALLS, set()).update(made)


def selected(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Remember which end-to-end modules this run selected (after -k/-m and explicit paths)."""
    e2e = ROOT / "tests" / "e2e"
    config.stash[E2E_FILES] = {str(item.path) for item in items if item.path.parent == e2e}


def worker_output(config: pytest.Config) -> dict[str, Any]:
    return {"rbac_calls": sorted(config.stash.get(CALLS, set())),
            "rbac_e2e_files": sorted(config.stash.get(E2E_FILES, set()))}


def merge(config: pytest.Config, output: dict[str, Any]) -> None:
    record(config, (tuple(call) for call in output.get("rbac_calls", [])))  # type: ignore[misc]
    config.stash.setdefault(E2E_FILES, set()).update(output.get("rbac_e2e_files", []))


def verdict(config: pytest.Config) -> list[str]:
    """What the whole run's record says is wrong ([] when nothing, or when no bed ran)."""
    made = config.stash.get(CALLS, set())
    if not made:
        return []
    found = [f"denied: {call}" for call in denied(made)]
    every_module = {str(p) for p in (ROOT / "tests" / "e2e").glob("test_*.py")}
    if config.stash.get(E2E_FILES, set()) >= every_module and not config.getoption("keyword") \
            and not config.getoption("markexpr"):
        found += [f"granted but never called: {grant}" for grant in unused(made)]
    return found
