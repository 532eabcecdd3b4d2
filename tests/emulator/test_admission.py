"""Admission of custom resources: defaults and validation from the CRD, answered as kube-apiserver."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest
from agentrun_local import emulator

from tests.emulator.conftest import WIDGETS, merge_patch, widget, widget_crd


@dataclasses.dataclass
class Problem:
    field: str
    message: str


LIMIT = {"size": 10}


def fake_admission(crd: Mapping[str, Any], obj: dict[str, Any]) -> tuple[dict[str, Any], list[Problem]]:
    """Defaults spec.color to "grey"; refuses spec.size > LIMIT and status.phase "Bogus"."""
    obj.setdefault("spec", {}).setdefault("color", "grey")
    problems = []
    if obj["spec"].get("size", 0) > LIMIT["size"]:
        problems.append(Problem("spec.size", f"Invalid value: {obj['spec']['size']}: must be at most {LIMIT['size']}"))
    if obj.get("status", {}).get("phase") == "Bogus":
        problems.append(Problem("status.phase", 'Unsupported value: "Bogus": supported values: "Running"'))
    if "extra" in obj["spec"]:
        problems.append(Problem("spec.extra", 'unknown field "spec.extra"'))
    return obj, problems


@pytest.fixture
def fake() -> Iterator[httpx.Client]:
    LIMIT["size"] = 10
    with emulator.EmulatorServer(crds=[widget_crd()], admission=fake_admission) as server:
        with httpx.Client(base_url=server.url) as api:
            yield api


def test_admission_defaults_are_stored(fake: httpx.Client) -> None:
    """Defaults from admission are applied on create and on updates."""
    assert fake.post(WIDGETS, json=widget("w", size=1)).json()["spec"] == {"size": 1, "color": "grey"}
    assert merge_patch(fake, f"{WIDGETS}/w", {"spec": {"color": None}}).json()["spec"]["color"] == "grey"


def test_invalid_object_is_422_with_field_causes(fake: httpx.Client) -> None:
    """A refused write is 422, reason Invalid, message '<Kind>.<group> "<name>" is invalid: <field>:
    <message>' and one details.causes entry per problem."""
    response = fake.post(WIDGETS, json=widget("w", size=11))
    assert response.status_code == 422
    status = response.json()
    assert status["reason"] == "Invalid"
    assert status["message"] == 'Widget.example.com "w" is invalid: spec.size: Invalid value: 11: must be at most 10'
    assert status["details"]["causes"] == [
        {"reason": "FieldValueInvalid", "message": "Invalid value: 11: must be at most 10", "field": "spec.size"}]
    assert status["details"]["kind"] == "Widget" and status["details"]["name"] == "w"
    fake.post(WIDGETS, json=widget("ok", size=1))
    assert merge_patch(fake, f"{WIDGETS}/ok", {"spec": {"size": 12}}).status_code == 422


def test_status_writes_are_validated_and_ratcheted(fake: httpx.Client) -> None:
    """/status writes are validated (the status schema), but a field the write did not change
    never fails it (ratcheting): a spec that became invalid under a stricter rule does not
    block status updates or unrelated spec changes; changing that field to another invalid
    value is refused."""
    fake.post(WIDGETS, json=widget("w", size=8))
    response = merge_patch(fake, f"{WIDGETS}/w/status", {"status": {"phase": "Bogus"}})
    assert response.status_code == 422
    assert response.json()["details"]["causes"][0]["reason"] == "FieldValueNotSupported"
    LIMIT["size"] = 5  # the stored size 8 is now invalid
    assert merge_patch(fake, f"{WIDGETS}/w/status", {"status": {"phase": "Running"}}).status_code == 200
    assert merge_patch(fake, f"{WIDGETS}/w", {"spec": {"color": "red"}}).status_code == 200
    assert merge_patch(fake, f"{WIDGETS}/w", {"spec": {"size": 7}}).status_code == 422


def test_unknown_fields_are_pruned_or_refused_by_field_validation(fake: httpx.Client) -> None:
    """Unknown fields are dropped with a Warning header by default (fieldValidation=Warn) and
    refused with 400 BadRequest 'strict decoding error' under fieldValidation=Strict (kubectl)."""
    response = fake.post(WIDGETS, json=widget("w", size=1, extra=True))
    assert response.status_code == 201
    assert "extra" not in response.json()["spec"]
    assert 'unknown field \\"spec.extra\\"' in response.headers["warning"]
    response = fake.post(WIDGETS, params={"fieldValidation": "Strict"}, json=widget("x", size=1, extra=True))
    assert response.status_code == 400
    assert response.json()["message"] == ('Widget in version "v1" cannot be handled as a Widget: '
                                          'strict decoding error: unknown field "spec.extra"')


def test_ratchet_drops_problems_of_unchanged_fields() -> None:
    """Validation ratcheting keeps errors only where the value changed (or is new)."""
    from agentrun_local.emulator import validation

    problems = [Problem("spec.size", "Invalid value"), Problem("spec.steps[1].name", "Required value"),
                Problem("status.phase", "Invalid value")]
    old = {"spec": {"size": 50, "steps": [{}, {"x": 1}]}, "status": {"phase": "A"}}
    new: dict[str, Any] = {"spec": {"size": 50, "steps": [{}, {"x": 1}]}, "status": {"phase": "B"}}
    assert [p.field for p in validation.ratchet(problems, old, new)] == ["status.phase"]
    assert len(validation.ratchet(problems, None, new)) == 3
    validation.remove_at(new, "spec.steps[1].x")
    assert new["spec"]["steps"] == [{}, {}]


def test_the_crd_schema_validates_through_agentrun_schema(api: httpx.Client) -> None:
    """Without an injected admission, agentrun.schema applies the CRD's defaults and refuses
    values its OpenAPI schema forbids, with kube-apiserver's wording."""
    assert api.post(WIDGETS, json=widget("defaults")).json()["spec"]["size"] == 1
    response = api.post(WIDGETS, json=widget("zero", size=0))
    assert response.status_code == 422
    assert response.json()["message"] == ('Widget.example.com "zero" is invalid: spec.size: Invalid value: 0: '
                                          "spec.size in body should be greater than or equal to 1")
    response = api.post(WIDGETS, params={"fieldValidation": "Strict"},
                        content=json.dumps(widget("typo", sise=2)), headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and 'unknown field "spec.sise"' in response.json()["message"]
