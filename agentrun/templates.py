"""The prompt templates of AgentWorkflow steps: ``{{input}}`` and ``{{steps.<name>.output}}``.

The operator checks a workflow's templates when it resolves a run's ``workflowRef`` (a bad
reference fails the run ``WorkflowInvalid`` before it is queued); the worker renders each
step's prompt just before the step runs.

The syntax is deliberately tiny — plain string substitution, not Jinja: no expressions, no
filters, no loops, nothing a prompt author could use to read the worker's environment.

- ``{{input}}`` is the run's input (``spec.input`` or what ``spec.inputFrom`` points at).
- ``{{steps.<name>.output}}`` is the final output of step ``<name>`` (its ``complete``
  text, else its last assistant text).
- Spaces inside the braces are allowed: ``{{ input }}``.
- Substitution is one pass: text that comes *in* through a placeholder (a user's input, a
  step's output) is never expanded again, so an output that happens to contain
  ``{{input}}`` cannot inject anything.
- ``{{`` followed by anything that is not a name (``{{ .Values.x }}``, ``{{#each}}``) is
  left as it is. A name that is not a placeholder (``{{inputs}}``, ``{{steps.a}}``) is an
  error, so a typo is reported instead of reaching the model.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["TemplateError", "check_workflow", "references", "render"]

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_.-]*)\s*\}\}")
_STEP = re.compile(r"^steps\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.output$")

INPUT = "input"


class TemplateError(ValueError):
    """A placeholder that is not ``{{input}}`` or ``{{steps.<name>.output}}``."""


def _parse(name: str) -> str | None:
    """None for ``input``, the step name for ``steps.<name>.output``; else TemplateError."""
    if name == INPUT:
        return None
    found = _STEP.match(name)
    if found is None:
        raise TemplateError(
            f"unknown placeholder {{{{{name}}}}}: use {{{{input}}}} or {{{{steps.<name>.output}}}}"
        )
    return found.group(1)


def references(template: str) -> list[str]:
    """The step names ``template`` refers to, in order of appearance (may repeat)."""
    found: list[str] = []
    for match in _PLACEHOLDER.finditer(template):
        step = _parse(match.group(1))
        if step is not None:
            found.append(step)
    return found


def render(template: str, *, input: str, outputs: Mapping[str, str]) -> str:  # noqa: A002  (the placeholder's name)
    """``template`` with every placeholder replaced, in one pass.

    Raises TemplateError for a bad placeholder or a step whose output is not in ``outputs``
    (it has not run yet).
    """

    def replace(match: re.Match[str]) -> str:
        step = _parse(match.group(1))
        if step is None:
            return input
        if step not in outputs:
            raise TemplateError(f'step "{step}" has not run yet: its output is not available')
        return outputs[step]

    return _PLACEHOLDER.sub(replace, template)


def check_workflow(spec: Mapping[str, Any], *, ordered: bool | None = None) -> list[str]:
    """Problems with the templates of an AgentWorkflow spec; empty when every prompt is fine.

    Every placeholder must be well formed and name a step of the workflow. With ``ordered``
    (default: when the executor is ``deterministic``) a step may only use the output of a
    step before it, since steps run in their listed order.
    """
    steps: Sequence[Mapping[str, Any]] = spec.get("steps") or []
    if ordered is None:
        ordered = spec.get("executor", "deterministic") == "deterministic"
    names = [str(step.get("name", "")) for step in steps]
    problems: list[str] = []
    for index, step in enumerate(steps):
        where = f'step "{names[index]}"'
        try:
            used = references(str(step.get("prompt", "")))
        except TemplateError as exc:
            problems.append(f"{where}: {exc}")
            continue
        for name in _unique(used):
            if name not in names:
                problems.append(f'{where}: {{{{steps.{name}.output}}}} names no step of the workflow')
            elif ordered and names.index(name) >= index:
                problems.append(f'{where}: {{{{steps.{name}.output}}}} is not the output of an earlier step')
    return problems


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))
