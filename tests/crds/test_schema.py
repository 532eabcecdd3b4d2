"""``agentrun.schema`` itself: the API server's order, wording and OpenAPI specifics.

The AgentRun and WorkerPool CRDs cover the common paths (see test_manifests); a small CRD
made here covers what they do not use: nullable, int-or-string, maps, embedded resources,
messageExpression, rule reasons, transition rules.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import celpy
import pytest

from agentrun import schema


def run(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun", "metadata": {"name": "r"}, "spec": spec}


AGENTRUN = schema.crd_for("AgentRun")


def fields(errors: list[schema.FieldError]) -> list[str]:
    return [e.field for e in errors]


def test_defaults_return_a_copy_and_are_idempotent() -> None:
    obj = run(input="hi", agent={"model": "scripted"})
    before = copy.deepcopy(obj)
    once = schema.apply_defaults(AGENTRUN, obj)
    assert obj == before
    assert schema.apply_defaults(AGENTRUN, once) == once


def test_null_fields_are_pruned_or_defaulted() -> None:
    obj = run(input="hi", threadId=None, agent={"model": "scripted", "maxIterations": None})
    defaulted = schema.apply_defaults(AGENTRUN, obj)
    assert "threadId" not in defaulted["spec"]
    assert defaulted["spec"]["agent"]["maxIterations"] == 100
    assert schema.validate(AGENTRUN, obj) == []


def test_a_type_error_skips_every_rule_and_says_so() -> None:
    # Given a run with a type error that also breaks a CEL rule (no input)
    errors = schema.validate(AGENTRUN, run(stop="yes", agent={"model": "scripted"}))
    # Then only the type error is reported, with kube-apiserver's note
    assert fields(errors) == ["spec.stop", "<nil>"]
    assert errors[0].reason == "FieldValueTypeInvalid"
    assert "some validation rules were not checked" in errors[1].message


def test_a_bound_error_does_not_skip_the_rules() -> None:
    errors = schema.validate(AGENTRUN, run(agent={"model": "scripted", "maxIterations": 0}))
    assert fields(errors) == ["spec.agent.maxIterations", "spec"]
    assert errors[0].message == (
        "Invalid value: 0: spec.agent.maxIterations in body should be greater than or equal to 1"
    )
    assert errors[1].message == 'Invalid value: "object": exactly one of input, inputFrom or inputParts must be set'


def test_rules_of_a_node_that_failed_its_schema_are_not_evaluated() -> None:
    # The agent rule reads self.model; with model missing only "Required value" is useful
    errors = schema.validate(AGENTRUN, run(input="hi", agent={"script": [{"text": "x"}]}))
    assert [(e.field, e.reason) for e in errors] == [("spec.agent.model", "FieldValueRequired")]


def test_the_items_of_a_list_over_its_max_items_are_not_evaluated_one_by_one(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a script of 8,000 steps (at most 1,000 allowed), each breaking its CEL rule
    steps = [{"text": "x", "fail": "y"}] * 8000
    calls = []
    evaluate = schema._evaluate
    monkeypatch.setattr(schema, "_evaluate", lambda *args: calls.append(args[2]) or evaluate(*args))
    errors = schema.validate(AGENTRUN, run(input="hi", agent={"model": "scripted", "script": steps}))
    # Then the list is refused for its length, and no step's rule runs (it cost 12 s of CPU)
    assert [(e.field, e.reason) for e in errors] == [("spec.agent.script", "FieldValueTooMany")]
    assert len(calls) < 10
    # while a list within its bound still has every item's rules evaluated
    errors = schema.validate(AGENTRUN, run(input="hi", agent={"model": "scripted", "script": steps[:3]}))
    assert fields(errors) == ["spec.agent.script[0]", "spec.agent.script[1]", "spec.agent.script[2]"]


def test_duplicates_are_found_in_linear_time_and_not_searched_in_a_list_over_its_max_items() -> None:
    import time

    # Given the 28,000 distinct tool names that fit in 256 KiB (at most 128 allowed): one error
    names = [f"t{i}" for i in range(28_000)]
    started = time.perf_counter()
    errors = schema.validate(AGENTRUN, run(input="hi", agent={"model": "scripted", "tools": names}))
    assert [(e.field, e.reason) for e in errors] == [("spec.agent.tools", "FieldValueTooMany")]
    # comparing each name with all before it took 8 s here; by identity it takes ≈ 0.5 s
    assert time.perf_counter() - started < 4
    # and 60,000 copies of one name are one error too, not 60,000 duplicates
    errors = schema.validate(AGENTRUN, run(input="hi", agent={"model": "scripted", "tools": ["a"] * 60_000}))
    assert fields(errors) == ["spec.agent.tools"]
    # while a list within its bound still has its duplicates named, objects' keys in any order
    errors = schema.validate(AGENTRUN, run(input="hi", agent={"model": "scripted", "tools": ["a", "b", "a"]}))
    assert [(e.field, e.reason) for e in errors] == [("spec.agent.tools[2]", "FieldValueDuplicate")]


def test_unknown_fields_are_reported_and_pruned_before_the_schema() -> None:
    errors = schema.validate(AGENTRUN, run(input="hi", agent={"model": "scripted", "maxIteration": "x"}, extra={}))
    assert [(e.field, e.message, e.reason) for e in errors] == [
        ("spec.agent.maxIteration", 'unknown field "spec.agent.maxIteration"', "FieldValueForbidden"),
        ("spec.extra", 'unknown field "spec.extra"', "FieldValueForbidden"),
    ]


def test_metadata_apiversion_and_kind_are_not_unknown() -> None:
    obj = run(input="hi", agent={"model": "scripted"})
    obj["metadata"] = {"name": "r", "namespace": "n", "labels": {"a": "b"}, "annotations": {"x": "y"}, "uid": "u"}
    assert schema.validate(AGENTRUN, obj) == []


def test_format_errors_like_the_api_server() -> None:
    one = [schema.FieldError("spec.stop", "Invalid value: 1: bad", "FieldValueInvalid")]
    two = one + [schema.FieldError("spec", "Required value", "FieldValueRequired")]
    assert schema.format_errors("AgentRun", "x", one) == (
        'AgentRun.agentrun.io "x" is invalid: spec.stop: Invalid value: 1: bad'
    )
    assert schema.format_errors("AgentRun", "x", two) == (
        'AgentRun.agentrun.io "x" is invalid: [spec.stop: Invalid value: 1: bad, spec: Required value]'
    )
    assert schema.format_errors("Foo.example.com", "y", []) == 'Foo.example.com "y" is invalid'


def test_field_error_is_a_frozen_value() -> None:
    error = schema.FieldError("spec", "Required value", "FieldValueRequired")
    assert str(error) == "spec: Required value"
    with pytest.raises(dataclasses.FrozenInstanceError):
        error.field = "x"  # type: ignore[misc]


def test_crd_for_knows_every_name_of_a_kind() -> None:
    for name in ("AgentRun", "agentrun", "agentruns", "ar", "agentruns.agentrun.io"):
        assert schema.crd_for(name) is AGENTRUN
    assert schema.crd_for("wp")["spec"]["names"]["kind"] == "WorkerPool"
    with pytest.raises(KeyError):
        schema.crd_for("Nothing")


def test_unknown_version_is_a_schema_error() -> None:
    with pytest.raises(schema.SchemaError):
        schema.validate(AGENTRUN, run(input="hi"), version="v9")


def test_cel_programs_compile_once_per_crd(monkeypatch: pytest.MonkeyPatch) -> None:
    schema.validate(AGENTRUN, run(input="hi", agent={"model": "scripted"}))
    compiled: list[str] = []
    original = celpy.Environment.compile
    monkeypatch.setattr(celpy.Environment, "compile", lambda self, text: compiled.append(text) or original(self, text))
    for index in range(50):
        # the emulator passes a shallow copy of the CRD each time
        assert schema.validate(dict(AGENTRUN), run(input=f"hi {index}", agent={"model": "scripted"})) == []
    assert compiled == []


# -- a CRD with what AgentRun and WorkerPool do not use ------------------------------------------

WIDGET = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.example.com"},
    "spec": {
        "group": "example.com",
        "names": {"kind": "Widget", "plural": "widgets"},
        "scope": "Namespaced",
        "versions": [{
            "name": "v1",
            "served": True,
            "storage": True,
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {
                        "type": "object",
                        "x-kubernetes-validations": [
                            {"rule": "!has(self.owner) || self.owner != 'root'",
                             "messageExpression": "'owner ' + self.owner + ' is reserved'",
                             "reason": "FieldValueForbidden", "fieldPath": ".owner"},
                            {"rule": "self.size == oldSelf.size", "message": "size is immutable"},
                            {"rule": "!has(self.owner) || self.owner != 'broken' || self.missing == 1"},
                        ],
                        "properties": {
                            "owner": {"type": "string"},
                            "note": {"type": "string", "nullable": True},
                            "port": {"x-kubernetes-int-or-string": True},
                            "size": {"type": "integer", "default": 1, "minimum": 1,
                                     "exclusiveMaximum": True, "maximum": 10},
                            "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 3}},
                            "when": {"type": "string", "format": "date-time"},
                            "template": {
                                "type": "object",
                                "x-kubernetes-embedded-resource": True,
                                "properties": {
                                    "spec": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                                },
                            },
                        },
                    },
                },
            }},
        }],
    },
}


def widget(**spec: Any) -> dict[str, Any]:
    return {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec}


def test_nullable_int_or_string_maps_and_embedded_resources() -> None:
    ok = widget(note=None, port="http", labels={"a.b/c": "xyz"}, when="2025-02-03T04:05:06.7+01:00",
                template={"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"anything": [1]}})
    assert schema.validate(WIDGET, ok, version="v1") == []
    assert schema.apply_defaults(WIDGET, ok, version="v1")["spec"]["note"] is None


def test_openapi_keywords_are_worded_like_kube_apiserver() -> None:
    errors = schema.validate(WIDGET, widget(size=10, labels={"a.b/c": "long"}, when="yesterday"), version="v1")
    assert [(e.field, e.message) for e in errors] == [
        ("spec.size", "Invalid value: 10: spec.size in body should be less than 10"),
        ("spec.labels[a.b/c]", "Too long: may not be longer than 3"),
        ("spec.when", 'Invalid value: "yesterday": spec.when in body must be of type date-time: "yesterday"'),
        ("<nil>", ('Invalid value: "null": some validation rules were not checked because the object was invalid; '
                   "correct the existing errors to complete validation")),
    ]
    errors = schema.validate(WIDGET, widget(port=True), version="v1")
    assert errors[0].message == 'Invalid value: "boolean": spec.port in body must be of type integer,string: "boolean"'


def test_rule_reason_message_expression_errors_and_transition_rules() -> None:
    errors = schema.validate(WIDGET, widget(owner="root", port=80), version="v1")
    assert [(e.field, e.reason, e.message) for e in errors] == [
        ("spec.owner", "FieldValueForbidden", "Forbidden: owner root is reserved"),
    ]
    # the transition rule (oldSelf) was not evaluated: there is no old object to compare with
    # a rule that fails to evaluate is reported with the error, never passed silently
    [error] = schema.validate(WIDGET, widget(owner="broken"), version="v1")
    assert error.field == "spec"
    assert error.message.startswith('Invalid value: "object": ')
    assert "'missing'" in error.message
    assert error.message.endswith(" evaluating rule: !has(self.owner) || self.owner != 'broken' || self.missing == 1")
