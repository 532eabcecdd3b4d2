"""Validation ratcheting: an update is not refused for values it leaves unchanged.

kube-apiserver (CRDValidationRatcheting, on by default since 1.30) does not re-run the CEL
rules of unchanged values on an update, so a status write never fails, or pays, for the spec.
The emulator passes the stored object as ``old``; ``schema.validate`` skips what is equal.
"""

from __future__ import annotations

import copy
import pathlib
from typing import Any

import yaml

from agentrun import schema

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "crds" / "agentrun.yaml").read_text())


def run(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun", "metadata": {"name": "r"},
            "spec": {"agent": {"model": "scripted"}, **spec}}


def cel_fields(errors: list[schema.FieldError]) -> list[str]:
    return [e.field for e in errors]


def test_an_unchanged_spec_is_not_checked_again_but_a_changed_one_is() -> None:
    # Given a stored run that breaks a CEL rule (input and inputFrom both set; say the rule came later)
    stored = schema.apply_defaults(CRD, run(input="hi", inputFrom={"configMapKeyRef": {"name": "c", "key": "k"}}))
    assert "spec" in cel_fields(schema.validate(CRD, stored))
    # When only its status changes, the update passes
    status_write = copy.deepcopy(stored)
    status_write["status"] = {"phase": "Queued", "attempt": 1}
    assert schema.validate(CRD, status_write, old=stored) == []
    # When its spec changes, the spec's rules run again and refuse it
    spec_write = copy.deepcopy(stored)
    spec_write["spec"]["stop"] = True
    assert "spec" in cel_fields(schema.validate(CRD, spec_write, old=stored))


def test_a_changed_status_is_still_checked_by_the_schema() -> None:
    stored = schema.apply_defaults(CRD, run(input="hi"))
    bad = copy.deepcopy(stored)
    bad["status"] = {"phase": "Bogus"}
    assert "status.phase" in cel_fields(schema.validate(CRD, bad, old=stored))
