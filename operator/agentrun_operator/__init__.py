"""The kopf operator of agentrun: ``kopf run -m agentrun_operator``.

Importing this package registers every handler: ``startup`` builds the clients into kopf's
memo (one typed ``memos.Memo``) and starts the recovery scan, the autoscaler and ``/metrics``,
whose decisions are the pure functions of ``decisions``; ``workerpools`` indexes
pools and keeps their Deployments; ``agentruns`` dispatches runs, forwards stop requests and
indexes runs for the scan and the metrics.
"""

from agentrun_operator import agentruns, startup, workerpools

__all__ = ["agentruns", "startup", "workerpools"]
