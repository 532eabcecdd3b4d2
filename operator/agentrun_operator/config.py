"""Settings only the operator reads (``AGENTRUN_*`` environment variables).

The shared settings (broker, Redis, database, lease timing) are :class:`agentrun.settings.Settings`;
these add the timing of the operator's own background scan, its metrics endpoint, and what
it gives the WorkerPool Deployments it builds (the Helm chart sets those from its values). ``startup`` loads them into
``memo.operator_config``.
"""

from __future__ import annotations

from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTRUN_", extra="ignore")

    scan_interval_seconds: float = 10.0
    """Seconds between two recovery scans. 10 s: with the default 30 s lease TTL a lost worker
    is noticed within 40 s (the issue asks for 60 s), and one scan costs a single pipelined
    Redis round trip for every live run, so a shorter interval buys little and costs little."""

    queued_timeout_seconds: float = 300.0
    """Seconds a ``Queued`` run may wait for a worker (counted from ``status.queuedAt`` or the
    last re-publish) before its message is taken as lost and published again with the same id.
    5 min: longer than a normal queue wait, so a busy pool rarely gets a duplicate (which the
    worker would drop anyway), short enough that a purged queue heals the same hour."""

    metrics_port: int = 8080
    """TCP port of the Prometheus endpoint ``/metrics`` (0: no endpoint). 8080 is the chart's
    ``operator.metricsPort`` and the port Prometheus operators look for by convention. A port
    that cannot be bound stops the operator at start-up rather than running unobserved."""

    requeue_claim_seconds: float = 30.0
    """How long the operator holds a lost run's lease while it re-queues or ends the run, so
    that no late redelivery of the old attempt can start in between. 30 s is far above the
    few API calls it covers; the claim is released as soon as they are done."""

    pool_missing_grace_seconds: float = 30.0
    """Seconds a queued run's WorkerPool may be missing before the run ends ``Failed``/
    ``PoolDeleted``. Long enough to delete and re-create a pool (its queue, and the messages
    in it, stay), short enough that runs nobody will consume do not wait for their deadline."""

    autoscale_interval_seconds: float = 1.0
    """Seconds between two autoscaler passes over the pools in ``operator`` mode. A pass reads
    only in-memory indexes and writes only when a number changes, so 1 s costs nothing and keeps
    the time from backlog to new replicas near a second (KEDA's defaults react in 30-45 s)."""

    rabbitmq_management_url: str | None = None
    """RabbitMQ management API (``http://user:password@rabbitmq:15672``). Set: the autoscaler
    sizes a pool from the larger of its own count and the queue's ready + unacknowledged
    messages. The chart takes it from the connection Secret's ``rabbitmq-management-url`` key
    when present."""

    broker_stats_interval_seconds: float = 5.0
    """Seconds between two reads of the management API: RabbitMQ refreshes its queue figures
    every 5 s (``collect_statistics_interval``), so reading more often returns the same."""

    prometheus_url: str = "http://prometheus-operated.monitoring.svc:9090"
    """Prometheus that KEDA queries for pools in ``keda`` mode (a pool's
    ``autoscaling.prometheusAddress`` overrides it). The default is the Service the
    prometheus-operator creates; the chart sets it from ``operator.prometheusUrl``."""

    keda_polling_interval_seconds: int = 10
    """``pollingInterval`` of the ScaledObjects the operator creates. KEDA's default is 30 s;
    10 s keeps a backlog's wait for workers short at the cost of one cheap query per pool."""

    autoscale_coalesce_seconds: float = 0.05
    """Seconds the autoscaler waits after a run's phase changes before its pass, so that a
    burst of changes makes one pass. 50 ms keeps the answer to a new backlog far under the
    2 s the issue asks for, and a pass costs only in-memory reads."""

    worker_image: str = "ghcr.io/agentrun/agentrun-worker:latest"
    """Image of a pool without ``spec.image``; the chart passes the worker image it installed."""

    worker_image_pull_policy: str = "IfNotPresent"
    """Pull policy of a pool without ``spec.imagePullPolicy``: Kubernetes' own default for tags."""

    worker_service_account: str = ""
    """ServiceAccount of the worker pods (they read and patch AgentRuns). Empty: the namespace's
    ``default`` account; the chart passes the workers' account it created."""

    connection_secret: str = "agentrun-connection"
    """Secret in the pool's namespace with the broker, Redis and database URLs the workers get
    (never copied into the Deployment). The chart's ``connection.existingSecret`` default."""

    connection_broker_url_key: str = "broker-url"
    """Key of the broker URL in ``connection_secret`` (the chart's default key)."""

    connection_redis_url_key: str = "redis-url"
    """Key of the Redis URL in ``connection_secret`` (the chart's default key)."""

    connection_database_url_key: str = "database-url"
    """Key of the database URL in ``connection_secret`` (the chart's default key)."""

    connection_supabase_url_key: str = ""
    """Key of the Supabase project URL in ``connection_secret``. Set (with
    ``connection_supabase_key_key``): the workers get ``SUPABASE_URL`` and
    ``AGENTRUN_SUPABASE_KEY`` instead of ``AGENTRUN_DATABASE_URL`` (the chart's
    ``connection.supabase``). Empty: they get the database URL."""

    connection_supabase_key_key: str = ""
    """Key of the Supabase service-role key in ``connection_secret`` (see above)."""

    worker_termination_grace_seconds: int = 120
    """Seconds a terminating worker pod gets to finish or hand back its runs before SIGKILL.
    2 min covers most agent turns; a run still going after that is recovered by the lease
    (re-queued as its next attempt), so a longer grace only slows roll-outs."""

    worker_metrics_port: int = 9191
    """Port where each worker pod serves its metrics on ``/metrics`` (the worker's
    ``AGENTRUN_METRICS_PORT``; 9191 is the port of Dramatiq's own exporter), exposed as the
    container port ``metrics`` the chart's PodMonitor scrapes."""


def load() -> OperatorSettings:
    return OperatorSettings()
