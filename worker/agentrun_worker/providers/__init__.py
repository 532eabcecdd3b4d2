"""Model providers: the back-ends the agent loop calls for each turn.

``base`` defines the interface; ``scripted`` is the offline provider (deterministic, scripted
from the manifest) that demos and tests use without any network.
"""

from __future__ import annotations

from typing import Any

from agentrun_worker.providers import base, scripted

__all__ = ["base", "for_agent", "scripted"]


def for_agent(agent: dict[str, Any], user_input: str) -> base.Provider:
    model = str(agent.get("model", ""))
    if model == scripted.MODEL:
        return scripted.ScriptedProvider(agent.get("script") or [], user_input)
    raise base.ProviderUnavailable(
        f'no provider for model "{model}" in this worker; "{scripted.MODEL}" is the offline provider'
    )
