"""Settings shared by every agentrun process, read from ``AGENTRUN_*`` environment variables.

Each part reads what it needs: the operator (broker, Redis, timing of dispatch), the worker
(broker, Redis, database, its queue, lease timing), the CLI (Redis, kubeconfig). When a URL
is not set, ``agentrun dev`` provides an embedded stand-in; the operator and the worker in a
cluster refuse to start without it.
"""

from __future__ import annotations

import os
import socket
import uuid

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _instance_id() -> str:
    """``<pod>-<pid>-<random>``: the pod name (``AGENTRUN_POD_NAME``, from the downward API)
    or the host name, so the operator can tell which pod runs a run (pod-deletion-cost)."""
    host = os.environ.get("AGENTRUN_POD_NAME") or socket.gethostname()
    return f"{host}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def instance_host(instance: str | None) -> str | None:
    """The pod (or host) part of an instance id made by :func:`_instance_id`."""
    if not instance or instance.count("-") < 2:
        return None
    return instance.rsplit("-", 2)[0]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTRUN_", extra="ignore", populate_by_name=True)

    broker_url: str | None = None
    """AMQP URL of RabbitMQ (``amqp://user:pass@host:5672/vhost``). Unset: in-process stub
    broker, only meaningful inside ``agentrun dev``."""

    redis_url: str | None = None
    """Redis URL for streams, leases and stop requests. Unset: embedded Redis in dev."""

    database_url: str | None = None
    """``postgresql://…`` or ``sqlite:///path``. Unset: Supabase when ``SUPABASE_URL`` and a key
    are set, else SQLite under ``state_dir``. When both are set this one wins: it is
    agentrun's own setting, while ``SUPABASE_URL`` is often set for other programs too."""

    supabase_url: str | None = Field(
        default=None, validation_alias=AliasChoices("AGENTRUN_SUPABASE_URL", "SUPABASE_URL", "supabase_url")
    )
    """The Supabase project URL (``https://<ref>.supabase.co``): with ``supabase_key`` (and no
    ``database_url``) the store talks to Supabase's REST API. ``SUPABASE_URL`` is the name
    Supabase's own tools use; ``AGENTRUN_SUPABASE_URL`` wins when both are set."""

    supabase_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("AGENTRUN_SUPABASE_KEY", "SUPABASE_SERVICE_ROLE_KEY", "supabase_key"),
    )
    """The project's service-role (secret) key; the workers write runs of every user, so the
    anon key, bound by row level security, cannot do. A secret: never logged or shown."""

    database_retry_seconds: float = 60.0
    """How long a database operation is retried after infrastructure errors (seconds; see
    ``agentrun.store.retrying``). 60 s rides out a managed database's failover."""

    state_dir: str = ".agentrun"
    """Directory for local state of ``agentrun dev`` (SQLite file, kubeconfig)."""

    queue: str = "agentrun.default.default"
    """The broker queue this worker consumes: the WorkerPool's queue
    (``agentrun.<namespace>.<pool>``); the pool's Deployment sets it."""

    instance_id: str = Field(default_factory=_instance_id)
    """Identity of this process in leases and ``status.workerInstance``."""

    lease_ttl_seconds: float = 30.0
    """How long a lease outlives a silent worker. 30 s: long enough to ride out a GC pause or
    a slow Redis failover, short enough that a dead worker's run is retried within a minute."""

    lease_renew_seconds: float = 10.0
    """How often the lease is renewed: a third of the TTL, so two renewals can fail in a row."""

    heartbeat_seconds: float = 30.0
    """How often ``status.lastHeartbeatTime`` is written to the AgentRun. Much rarer than the
    lease renewal: every write to the API server costs an etcd write and a watch event."""

    stream_maxlen: int = 10_000
    """Approximate cap on a run's stream (``XADD MAXLEN ~``): bounded memory per run."""

    key_ttl_seconds: int = 86_400
    """TTL of a run's Redis keys after it ends (24 h): long enough for late readers."""

    stream_batch_max: int = 64
    """Most events the worker sends to Redis in one pipelined round trip."""

    pool_wait_seconds: float = 10.0
    """How long the operator waits for a missing WorkerPool before failing the run, so a pool
    and a run applied together never race."""

    log_format: str = "console"
    """``console`` for people, ``json`` for log collectors."""

    log_level: str = "INFO"


def load() -> Settings:
    return Settings()
