"""The run's user message: ``input`` text, ``inputParts`` (text and images) or ``inputFrom``.

Called by ``execution`` once the run is admitted. ``inputFrom`` names a ConfigMap or Secret
key in the run's namespace; a missing object or key fails the run ``InputNotFound``.
"""

from __future__ import annotations

import base64
from typing import Any

import lightkube
import lightkube.resources.core_v1 as core

from agentrun import kube, reasons

UserInput = str | list[dict[str, Any]]
"""Text, or OpenAI content parts."""


class InputError(Exception):
    reason = reasons.Reason.INPUT_NOT_FOUND


async def resolve(api: lightkube.AsyncClient, namespace: str, spec: dict[str, Any]) -> UserInput:
    """The user message: text, or content parts (``inputParts``: text and images)."""
    if spec.get("inputParts"):
        return [dict(part) for part in spec["inputParts"]]
    if "input" in spec:
        return str(spec["input"])
    ref = spec.get("inputFrom") or {}
    for field, resource in (("configMapKeyRef", core.ConfigMap), ("secretKeyRef", core.Secret)):
        if field in ref:
            name, key = ref[field]["name"], ref[field]["key"]
            try:
                obj = await api.get(resource, name, namespace=namespace)
            except kube.ApiError as exc:
                if kube.is_not_found(exc):
                    raise InputError(f'{resource.__name__} "{name}" not found') from exc
                raise
            data = getattr(obj, "data", None) or {}
            if key not in data:
                raise InputError(f'key "{key}" not found in {resource.__name__} "{name}"')
            value = data[key]
            if resource is core.Secret:
                value = base64.b64decode(value).decode()
            return str(value)
    return ""


def text_of(user_input: UserInput, separator: str = " ") -> str:
    """The text of the input: content parts' text parts joined (images have none)."""
    if isinstance(user_input, str):
        return user_input
    return separator.join(str(part.get("text", "")) for part in user_input if part.get("type") == "text")
