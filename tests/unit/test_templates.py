"""Step prompt templates: plain substitution of ``{{input}}`` and ``{{steps.<name>.output}}``."""

from __future__ import annotations

from typing import Any

import pytest

from agentrun import templates


def test_input_and_step_outputs_are_substituted() -> None:
    text = templates.render("Review {{ steps.draft.output }} for {{input}}.", input="PR 7",
                            outputs={"draft": "the draft"})
    assert text == "Review the draft for PR 7."


def test_substituted_text_is_never_expanded_again() -> None:
    # Given an input and an output that themselves look like placeholders
    text = templates.render("{{input}} / {{steps.a.output}}", input="{{steps.a.output}}", outputs={"a": "{{input}}"})
    # Then they arrive as they are
    assert text == "{{steps.a.output}} / {{input}}"


def test_other_double_braces_are_left_alone() -> None:
    assert templates.render("{{ .Values.x }} {{#each}} {{}}", input="i", outputs={}) == "{{ .Values.x }} {{#each}} {{}}"


@pytest.mark.parametrize("bad", ["{{inputs}}", "{{steps.a}}", "{{steps.a.result}}", "{{ step.a.output }}",
                                 "{{steps.A.output}}"])
def test_a_name_that_is_no_placeholder_is_an_error(bad: str) -> None:
    with pytest.raises(templates.TemplateError, match="unknown placeholder"):
        templates.render(bad, input="", outputs={"a": "x", "A": "x"})


def test_an_output_not_there_yet_is_an_error() -> None:
    with pytest.raises(templates.TemplateError, match='step "b" has not run yet'):
        templates.render("{{steps.b.output}}", input="", outputs={"a": "x"})


def test_references_in_order() -> None:
    assert templates.references("{{steps.b.output}} {{input}} {{steps.a.output}} {{steps.b.output}}") == ["b", "a", "b"]


def workflow(*prompts: str, executor: str = "deterministic") -> dict[str, Any]:
    return {"executor": executor, "steps": [{"name": f"s{i}", "prompt": p} for i, p in enumerate(prompts)]}


def test_check_accepts_a_pipeline() -> None:
    assert templates.check_workflow(workflow("{{input}}", "{{steps.s0.output}}", "{{steps.s1.output}} {{input}}")) == []


def test_check_names_the_step_and_the_reference() -> None:
    problems = templates.check_workflow(workflow("{{steps.s1.output}}", "{{steps.nope.output}}", "{{steps.s2.output}}",
                                                 "{{bad}}"))
    assert problems == [
        'step "s0": {{steps.s1.output}} is not the output of an earlier step',
        'step "s1": {{steps.nope.output}} names no step of the workflow',
        'step "s2": {{steps.s2.output}} is not the output of an earlier step',
        'step "s3": unknown placeholder {{bad}}: use {{input}} or {{steps.<name>.output}}',
    ]


def test_the_agent_executor_may_use_any_step_in_any_order() -> None:
    assert templates.check_workflow(workflow("{{steps.s1.output}}", "{{input}}", executor="agent")) == []
    assert templates.check_workflow(workflow("{{steps.s9.output}}", executor="agent")) == [
        'step "s0": {{steps.s9.output}} names no step of the workflow'
    ]
