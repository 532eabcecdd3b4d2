"""Settings of the gateway process, read from ``AGENTRUN_GATEWAY_*`` environment variables.

Read once by :func:`agentrun_gateway.app.main` (and by whoever builds the app with
:func:`agentrun_gateway.app.create_app`). The shared URLs (Redis, database) fall back to the
``AGENTRUN_*`` variables every agentrun process reads, so one environment serves the whole
system.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTRUN_GATEWAY_", extra="ignore", populate_by_name=True)

    host: str = "0.0.0.0"
    """Address uvicorn listens on. All interfaces: the gateway runs behind a Service."""

    port: int = 8080
    """TCP port uvicorn listens on (the chart's Service targets it)."""

    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("AGENTRUN_GATEWAY_REDIS_URL", "AGENTRUN_REDIS_URL", "redis_url")
    )
    """Redis holding the run streams and stop flags. Required."""

    database_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("AGENTRUN_GATEWAY_DATABASE_URL", "AGENTRUN_DATABASE_URL", "database_url"),
    )
    """``postgresql://…`` or ``sqlite:///path``: the record of runs and messages, served when a
    stream has expired and for ``/threads/{id}/messages``. Unset: SQLite under ``.agentrun/``."""

    kubeconfig: str | None = None
    """Path to a kubeconfig; unset: ``KUBECONFIG`` or the in-cluster service account."""

    jwt_secret: str | None = None
    """HS256 secret that signs accepted tokens (Supabase's project JWT secret works)."""

    jwks_url: str | None = None
    """URL of a JWKS with the RS256/ES256 public keys of accepted tokens (fetched and cached)."""

    jwks_file: str | None = None
    """Path of a JWKS file, for clusters that mount the keys instead of fetching them."""

    jwks_cache_seconds: float = 300.0
    """How long a JWKS fetched from ``jwks_url`` is used before it is fetched again. A key
    removed from the JWKS (revoked or rotated out) stops being accepted within this time;
    5 minutes keeps the key server's load negligible."""

    jwks_refresh_cooldown_seconds: float = 30.0
    """Least time between two fetches of the JWKS forced by tokens whose ``kid`` is unknown
    (a newly rotated key). Bounds what a flood of made-up kids costs the key server; a new
    key publishes ahead of its first use, so waiting this long rarely matters."""

    jwt_audience: list[str] = ["agentrun"]
    """Accepted ``aud`` values; a token must carry one. Supabase user tokens carry
    ``authenticated``. Never empty: a token minted for another service must not work here."""

    jwt_issuer: str | None = None
    """When set, the ``iss`` a token must carry."""

    namespaces_claim: str = "namespaces"
    """The claim listing the namespaces a token may see and act in (``"*"``: all)."""

    jwt_leeway_seconds: float = 30.0
    """Clock skew tolerated on ``exp``/``nbf``/``iat``: 30 s covers unsynchronised nodes
    without stretching a token's life noticeably."""

    insecure_no_auth: bool = False
    """Accept requests without a token, with access to every namespace. Only for
    ``agentrun dev`` on a laptop: the gateway refuses to start so unless ``host`` is a
    loopback address (``127.0.0.1``, ``::1``), and logs a warning when it starts."""

    rate_limit_per_second: float = Field(default=10.0, gt=0)
    """Sustained ``/v1`` requests a second per caller (the token's ``sub``, else the token).
    An open web view or ``agentrun list -w`` polls once every 2 s, so 10 leaves room for many
    tabs, CLIs and reconnecting streams of one person; beyond the bucket the answer is 429
    with ``Retry-After``. Per gateway process: with N processes or replicas a caller gets up
    to N times this."""

    rate_limit_burst: float = Field(default=40.0, ge=1)
    """Requests a caller may make at once before the rate applies (the bucket's size):
    enough for a page load, a CLI command and a few reconnecting streams together."""

    rate_limit_create_cost: float = Field(default=5.0, ge=1)
    """What creating a run takes from the bucket, in requests: its check costs up to ≈ 0.6 s
    of CPU, far more than a read, so by default 2 creates a second, 8 at once."""

    max_body_bytes: int = Field(default=256 * 1024, ge=1024, le=16 * 1024 * 1024)
    """Largest create-run body (413 beyond): kopf copies the spec into an annotation limited
    to 256 KiB, so a larger run could never start; large inputs go in ``spec.inputFrom``."""

    max_json_depth: int = Field(default=64, ge=8, le=512)
    """Deepest nesting of objects and lists in a create-run body (400 beyond). An AgentRun
    needs 7; 64 leaves room for free-form JSON and stays far from the parser's recursion."""

    validation_pool: Literal["process", "thread"] = "process"
    """Where create-run bodies are checked (the CRD schema and its CEL rules, up to ≈ 0.6 s of
    CPU each): a worker process kept ``/healthz`` within 1.03x of idle at p50 (1.7x at p99)
    while 256 KiB bodies were checked; a thread shares the GIL with the event loop and let it
    grow 4.8x at p50, 5.9x at p99 (``bench gateway_validation``, docs/benchmarks.md)."""

    validation_workers: int = Field(default=1, ge=1, le=64)
    """Processes (or threads) checking bodies. One keeps a core for the event loop on a
    two-core pod; more only help with more cores."""

    validation_queue: int = Field(default=64, ge=1)
    """Bodies checked or waiting at once in one gateway process; one more gets 503 with
    ``Retry-After`` instead of growing a backlog without bound."""

    heartbeat_seconds: float = 15.0
    """Idle time after which an SSE stream gets a ``: ping`` comment. 15 s: below the 30-60 s
    idle timeouts of common proxies and load balancers, rare enough to cost nothing."""

    workers: int = Field(default=1, ge=1, le=64)
    """Gateway processes on one port (uvicorn's ``--workers``). A process uses one core; an
    event delivered to a thousand SSE clients costs it about 10 ms of CPU (docs/benchmarks.md),
    so a pod serving many clients of fast-streaming runs wants one process per core it has.
    Each process has its own shared reader per run: clients are divided, Redis reads are not
    (one ``XREAD`` per run per process)."""

    redis_block_ms: int = 5_000
    """How long one ``XREAD BLOCK`` waits before the gateway checks whether a silent run
    ended without a terminal event or lost its stream."""

    redis_max_connections: int = 256
    """Redis connections one gateway process opens at most. Streams share one reader per run,
    so this bounds concurrent short commands (and clients that fell behind and read on their
    own), not the number of connected clients. Redis accepts 10,000 clients by default."""

    redis_pool_timeout_seconds: float = 20.0
    """How long a request waits for a free Redis connection before it fails with 503."""

    stream_buffer_events: int = 1024
    """Frames held for one SSE client that reads slower than the run writes. Beyond it the
    client leaves the run's shared reader and reads Redis on its own from where it is (no
    loss): a slow client never slows the others down."""

    list_limit: int = 500
    """Most runs one list request returns."""


def load() -> GatewaySettings:
    return GatewaySettings()
