"""The kopf operator of agentrun: ``kopf run -m agentrun_operator``.

Importing this package registers every handler: ``startup`` builds the clients into kopf's
memo, ``workerpools`` indexes pools and reports their queue, ``agentruns`` dispatches runs
and forwards stop requests.
"""

from agentrun_operator import agentruns, startup, workerpools

__all__ = ["agentruns", "startup", "workerpools"]
