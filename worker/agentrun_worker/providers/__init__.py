"""Model providers: the back-ends the agent loop calls for each turn.

``base`` defines the interface; ``scripted`` is the offline provider (deterministic, scripted
from the manifest) that demos and tests use without any network; ``chat_completions`` speaks
the OpenAI-compatible Chat Completions protocol (``model: <prefix>/<model>``). It is imported
on first use, so a worker without the ``openai`` library still runs scripted agents.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from agentrun_worker import config
from agentrun_worker.providers import base, scripted

__all__ = ["base", "close", "for_agent", "scripted"]

_CHAT_COMPLETIONS = "agentrun_worker.providers.chat_completions"


def for_agent(agent: dict[str, Any], user_input: str, settings: config.WorkerSettings) -> base.Provider:
    model = str(agent.get("model", ""))
    if model == scripted.MODEL:
        return scripted.ScriptedProvider(agent.get("script") or [], user_input)
    prefix, sep, name = model.partition("/")
    if sep and name and prefix in settings.model_endpoints:
        chat_completions: Any = importlib.import_module(_CHAT_COMPLETIONS)
        endpoint = settings.model_endpoints[prefix]
        return chat_completions.ChatCompletionsProvider(  # type: ignore[no-any-return]
            client=chat_completions.client_for(prefix, endpoint, settings),
            model=name, agent=agent, endpoint=endpoint, settings=settings,
        )
    prefixes = ", ".join(f'"{p}/<model>"' for p in sorted(settings.model_endpoints))
    raise base.ProviderUnavailable(
        f'no provider for model "{model}" in this worker; use "{scripted.MODEL}" (offline) or {prefixes} '
        "(AGENTRUN_MODEL_ENDPOINTS adds prefixes)"
    )


async def close() -> None:
    """Close the model clients this process opened (at worker shutdown)."""
    module: Any = sys.modules.get(_CHAT_COMPLETIONS)
    if module is not None:
        await module.close()
