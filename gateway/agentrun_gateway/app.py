"""The gateway's ASGI app: runs, stop requests, live streams and messages over HTTP.

:func:`create_app` builds the Starlette app (the tests and ``bench sse`` serve it with
uvicorn); :func:`main` is the process entry point (``agentrun gateway``, the chart's gateway
Deployment). Runs are read from and created in the Kubernetes API (:mod:`agentrun.kube`),
streams are read from Redis (:mod:`agentrun_gateway.sse`), messages and expired runs from
the database (:mod:`agentrun.store`). Every ``/v1`` request is authenticated by
:mod:`agentrun_gateway.auth` and limited to the namespaces of its token. ``/`` is the web
view (:mod:`agentrun_gateway.webview`), a page that uses the same ``/v1`` API.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import gc
import hashlib
import ipaddress
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx2  # lightkube's HTTP layer: its transport errors mean the API is unreachable
import lightkube
import lightkube.codecs
import lightkube.types
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
import structlog
import uvicorn
from starlette import applications, requests, responses, routing

from agentrun import control, kube, log, phases, settings, store, streams
from agentrun_gateway import admission, auth, chunks, config, fanout, metrics, openapi, ratelimit, sse, webview

logger = structlog.get_logger(__name__)

Handler = Callable[[requests.Request], Awaitable[responses.Response]]

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
THREAD_ID = re.compile(r"^[A-Za-z0-9._:/-]{1,256}$")


class HTTPError(Exception):
    """An answer other than success: status code, a short error label and a message."""

    def __init__(self, status: int, error: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.error = error
        self.message = message
        self.extra = extra


@dataclasses.dataclass
class Services:
    """The clients one app uses; created at startup unless given to :func:`create_app`."""

    settings: config.GatewaySettings
    verifier: auth.Verifier
    metrics: metrics.Metrics
    limiter: ratelimit.Limiter
    admission: admission.Pool
    api: lightkube.AsyncClient | None = None
    redis: aioredis.Redis | None = None
    database: store.Store | None = None
    hub: fanout.Hub | None = None

    def kube(self) -> lightkube.AsyncClient:
        assert self.api is not None, "the app is not started"
        return self.api

    def redis_client(self) -> aioredis.Redis:
        assert self.redis is not None, "the app is not started"
        return self.redis

    def db(self) -> store.Store:
        assert self.database is not None, "the app is not started"
        return self.database


def create_app(
    gateway_settings: config.GatewaySettings | None = None,
    *,
    api: lightkube.AsyncClient | None = None,
    redis: aioredis.Redis | None = None,
    database: store.Store | None = None,
) -> applications.Starlette:
    """The gateway app. Clients that are not given are opened at startup and closed at shutdown."""
    cfg = gateway_settings or config.load()
    if not cfg.redis_url and redis is None:
        raise ValueError("the gateway needs Redis: set AGENTRUN_REDIS_URL")
    if cfg.insecure_no_auth and not is_loopback(cfg.host):
        raise ValueError(
            f"AGENTRUN_GATEWAY_INSECURE_NO_AUTH serves every namespace to anyone who can connect, so the gateway "
            f"listens on loopback only in that mode: set AGENTRUN_GATEWAY_HOST (or --host) to 127.0.0.1 or ::1 "
            f"(it is {cfg.host!r}), or configure tokens (AGENTRUN_GATEWAY_JWT_SECRET, _JWKS_URL or _JWKS_FILE)"
        )
    verifier = auth.Verifier(
        secret=cfg.jwt_secret, jwks_url=cfg.jwks_url, jwks_file=cfg.jwks_file, audience=cfg.jwt_audience,
        issuer=cfg.jwt_issuer, namespaces_claim=cfg.namespaces_claim, leeway_seconds=cfg.jwt_leeway_seconds,
        allow_anonymous=cfg.insecure_no_auth, jwks_cache_seconds=cfg.jwks_cache_seconds,
        jwks_refresh_cooldown_seconds=cfg.jwks_refresh_cooldown_seconds,
    )
    services = Services(settings=cfg, verifier=verifier, metrics=metrics.Metrics(),
                        limiter=ratelimit.Limiter(cfg.rate_limit_per_second, cfg.rate_limit_burst),
                        admission=admission.Pool(cfg.validation_pool, cfg.validation_workers, cfg.validation_queue),
                        api=api, redis=redis, database=database)

    @contextlib.asynccontextmanager
    async def lifespan(_app: applications.Starlette) -> AsyncIterator[None]:
        opened: list[Callable[[], Awaitable[Any]]] = []
        services.admission.start()  # its worker processes start (and compile the schema) meanwhile

        async def close_admission() -> None:
            services.admission.close()

        opened.append(close_admission)
        if services.api is None:
            services.api = kube.client(cfg.kubeconfig)
            opened.append(services.api.close)
        if services.redis is None:
            # A blocking pool: a burst of clients waits for a connection instead of failing.
            pool = aioredis.BlockingConnectionPool.from_url(
                str(cfg.redis_url), max_connections=cfg.redis_max_connections, timeout=cfg.redis_pool_timeout_seconds,
                # XREAD BLOCK must end before the socket times out (redis-py's default is 5 s)
                socket_timeout=cfg.redis_block_ms / 1000 + 5,
            )
            services.redis = aioredis.Redis(connection_pool=pool)
            opened.append(services.redis.aclose)
        if services.database is None:
            # Its own URL, else what every process reads (Supabase's URL and key, or SQLite)
            services.database = (store.open_store(cfg.database_url) if cfg.database_url
                                 else store.from_settings(settings.load()))
            await services.database.connect()
            opened.append(services.database.close)
        services.hub = fanout.Hub(services.redis, encode=sse.entry_frame, block_ms=cfg.redis_block_ms,
                                  queue_size=cfg.stream_buffer_events)
        opened.append(services.hub.close)
        if cfg.insecure_no_auth:
            logger.warning("gateway.auth_disabled", why="AGENTRUN_GATEWAY_INSECURE_NO_AUTH is set")
        # What exists now (modules, the app, its clients) lives as long as the process: leave it
        # out of the collector's full passes, which otherwise walk all of it and paused the
        # process for up to 150 ms while it streamed to 1,000 clients (bench sse).
        gc.freeze()
        try:
            yield
        finally:
            for close in reversed(opened):
                await close()

    def guarded(handler: Callable[[requests.Request, Services, auth.Principal], Awaitable[responses.Response]],
                ) -> Handler:
        async def endpoint(request: requests.Request) -> responses.Response:
            try:
                principal = await services.verifier.authenticate(request.headers, request.query_params.keys())
                principal.require(request.path_params["namespace"])
                cost = cfg.rate_limit_create_cost if handler is create_run else 1.0
                wait = services.limiter.take(_caller(principal, request), cost)
                if wait:
                    services.metrics.rate_limited.inc()
                    return _error(429, "rate_limited",
                                  f"this token may make {cfg.rate_limit_per_second:g} requests/s (bursts of "
                                  f"{cfg.rate_limit_burst:g}; creating a run counts as "
                                  f"{cfg.rate_limit_create_cost:g}); retry in {ratelimit.retry_after(wait)} s",
                                  headers={"Retry-After": ratelimit.retry_after(wait)})
                _check_path(request.path_params)
                return await handler(request, services, principal)
            except auth.AuthError as exc:
                services.metrics.auth_failures.labels(reason=exc.reason).inc()
                logger.info("gateway.auth_refused", reason=exc.reason, path=request.url.path)
                headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if exc.status == 401 else {}
                return _error(exc.status, "unauthorized" if exc.status == 401 else "forbidden", exc.message,
                              headers=headers)
            except HTTPError as exc:
                return _error(exc.status, exc.error, exc.message, **exc.extra)
            except kube.ApiError as exc:
                code = exc.status.code or 502
                if code >= 500:
                    logger.warning("gateway.kube_error", code=code, message=exc.status.message)
                    return _error(502, "upstream", "the Kubernetes API failed")
                return _error(code, str(exc.status.reason or "kubernetes"), str(exc.status.message or exc))
            except (redis_errors.ConnectionError, redis_errors.TimeoutError, httpx2.TransportError, OSError):
                logger.warning("gateway.unavailable", exc_info=True)
                return _error(503, "unavailable", "Redis, the database or the Kubernetes API cannot be reached")
            except store.Unavailable:
                logger.warning("gateway.unavailable", exc_info=True)
                return _error(503, "unavailable", "the database cannot be reached")

        return endpoint

    async def healthz(_request: requests.Request) -> responses.Response:
        return responses.JSONResponse({"status": "ok"})

    async def metrics_endpoint(_request: requests.Request) -> responses.Response:
        return responses.Response(services.metrics.render(), media_type="text/plain; version=0.0.4")

    async def openapi_endpoint(_request: requests.Request) -> responses.Response:
        return responses.JSONResponse(openapi.document())

    prefix = "/v1/namespaces/{namespace}"
    routes = [
        routing.Route("/healthz", healthz, methods=["GET"]),
        routing.Route("/metrics", metrics_endpoint, methods=["GET"]),
        routing.Route("/openapi.json", openapi_endpoint, methods=["GET"]),
        routing.Route(f"{prefix}/runs", guarded(list_runs), methods=["GET"]),
        routing.Route(f"{prefix}/runs", guarded(create_run), methods=["POST"]),
        routing.Route(f"{prefix}/runs/{{name}}", guarded(get_run), methods=["GET"]),
        routing.Route(f"{prefix}/runs/{{name}}/stop", guarded(stop_run), methods=["POST"]),
        routing.Route(f"{prefix}/runs/{{name}}/stream", guarded(stream_run), methods=["GET"]),
        routing.Route(f"{prefix}/threads/{{thread_id}}/messages", guarded(thread_messages), methods=["GET"]),
        *webview.routes(),
    ]
    app = chunks.App(routes=routes, lifespan=lifespan)
    app.state.services = services
    return app


# -- handlers ---------------------------------------------------------------------------------------


async def list_runs(request: requests.Request, s: Services, _p: auth.Principal) -> responses.Response:
    namespace = request.path_params["namespace"]
    phase = request.query_params.get("phase")
    thread = request.query_params.get("thread")
    if phase is not None and phase not in {p.value for p in phases.Phase}:
        known = ", ".join(p.value for p in phases.Phase)
        raise HTTPError(422, "invalid", f"phase: unknown phase {phase!r}; expected one of {known}")
    items = []
    async for obj in s.kube().list(kube.AgentRun, namespace=namespace):
        run = kube.to_dict(obj)
        status = run.get("status") or {}
        if phase is not None and status.get("phase") != phase:
            continue
        if thread is not None and thread not in {(run.get("spec") or {}).get("threadId"), status.get("threadId")}:
            continue
        items.append(run)
        if len(items) >= s.settings.list_limit:
            break
    return responses.JSONResponse({"items": items})


async def get_run(request: requests.Request, s: Services, _p: auth.Principal) -> responses.Response:
    return responses.JSONResponse(await _get(s, request.path_params["namespace"], request.path_params["name"]))


async def create_run(request: requests.Request, s: Services, principal: auth.Principal) -> responses.Response:
    namespace = request.path_params["namespace"]
    limit = s.settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return _refused(s, admission.too_large(limit))
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > limit:
            return _refused(s, admission.too_large(limit))
    # Off the event loop: the CRD's CEL rules cost up to ≈ 0.6 s of CPU for a valid run.
    try:
        verdict = await s.admission.check(bytes(raw), namespace, creator=principal.subject or "unknown",
                                          max_depth=s.settings.max_json_depth)
    except admission.Busy:
        logger.warning("gateway.admission_busy", queue=s.settings.validation_queue)
        raise HTTPError(503, "busy", "too many runs are being checked; retry shortly") from None
    except concurrent.futures.BrokenExecutor:
        logger.error("gateway.admission_broken", why="a validation process died")
        raise HTTPError(503, "unavailable", "the run could not be checked; retry shortly") from None
    if isinstance(verdict, admission.Refused):
        return _refused(s, verdict)
    created = kube.to_dict(await s.kube().create(lightkube.codecs.from_dict(verdict.obj)))
    logger.info("gateway.run_created", namespace=namespace, name=created["metadata"].get("name"),
                created_by=principal.subject)
    return responses.JSONResponse(created, status_code=201)


def _refused(s: Services, verdict: admission.Refused) -> responses.Response:
    s.metrics.bodies_refused.labels(status=str(verdict.status)).inc()
    return responses.JSONResponse(verdict.answer(), status_code=verdict.status)


async def stop_run(request: requests.Request, s: Services, _p: auth.Principal) -> responses.Response:
    namespace, name = request.path_params["namespace"], request.path_params["name"]
    run = await _get(s, namespace, name)
    phase = (run.get("status") or {}).get("phase")
    if phases.is_terminal(phase):
        raise HTTPError(409, "finished", f'AgentRun "{name}" has already ended ({phase}); nothing to stop')
    uid = run["metadata"]["uid"]
    await control.request_stop(s.redis_client(), uid, reason="StopRequested")
    patched = kube.to_dict(await s.kube().patch(
        kube.AgentRun, name, {"spec": {"stop": True}}, namespace=namespace,
        patch_type=lightkube.types.PatchType.MERGE,
    ))
    logger.info("gateway.stop_requested", namespace=namespace, name=name, run_id=uid)
    return responses.JSONResponse(patched, status_code=202)


async def stream_run(request: requests.Request, s: Services, _p: auth.Principal) -> responses.Response:
    namespace, name = request.path_params["namespace"], request.path_params["name"]
    last_id = request.headers.get("last-event-id", "").strip() or streams.START
    if not sse.valid_last_event_id(last_id):
        raise HTTPError(400, "bad_request", "Last-Event-ID must be a stream entry id such as 1700000000000-0")
    run = await _get(s, namespace, name)
    uid = run["metadata"]["uid"]
    api = s.kube()

    async def run_status() -> dict[str, Any] | None:
        try:
            current = kube.to_dict(await api.get(kube.AgentRun, name, namespace=namespace))
        except kube.ApiError as exc:
            if kube.is_not_found(exc):
                return None
            raise
        if current["metadata"].get("uid") != uid:
            return None  # deleted and created again: another run
        status: dict[str, Any] = current.get("status") or {}
        return status

    source = sse.Source(redis=s.redis_client(), store=s.db(), uid=uid, run_status=run_status,
                        block_ms=s.settings.redis_block_ms, hub=s.hub)
    return sse.EventStream(source, last_id=last_id, heartbeat_seconds=s.settings.heartbeat_seconds,
                           buffer=s.settings.stream_buffer_events, on_events=s.metrics.events.inc,
                           connected=s.metrics.streams.inc)


async def thread_messages(request: requests.Request, s: Services, _p: auth.Principal) -> responses.Response:
    namespace, thread_id = request.path_params["namespace"], request.path_params["thread_id"]
    after = _int_param(request, "after", 0, 0, 2**62)
    limit = _int_param(request, "limit", 1000, 1, 1000)
    db = s.db()
    # Threads never cross namespaces: a thread is visible when a run of this namespace uses it.
    if not await db.list_runs(namespace=namespace, thread_id=thread_id, limit=1):
        raise HTTPError(404, "not_found", f'thread "{thread_id}" not found in namespace "{namespace}"')
    messages = await db.list_messages(thread_id, after_seq=after, limit=limit)
    return responses.JSONResponse({"items": [sse.message_record(m) for m in messages]})


# -- helpers --------------------------------------------------------------------------------------


async def _get(s: Services, namespace: str, name: str) -> dict[str, Any]:
    try:
        return kube.to_dict(await s.kube().get(kube.AgentRun, name, namespace=namespace))
    except kube.ApiError as exc:
        if kube.is_not_found(exc):
            raise HTTPError(404, "not_found", f'AgentRun "{name}" not found in namespace "{namespace}"') from exc
        raise


def is_loopback(host: str) -> bool:
    """Whether ``host`` is a loopback address (``127.0.0.0/8``, ``::1``); names are not resolved."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _caller(principal: auth.Principal, request: requests.Request) -> str:
    """Whose bucket a request takes from: the token's subject, else the token's hash."""
    if principal.subject:
        return f"sub:{principal.subject}"
    token = request.headers.get("authorization", "")
    return "token:" + hashlib.sha256(token.encode()).hexdigest() if token else "anonymous"


def _check_path(params: dict[str, Any]) -> None:
    if not DNS_LABEL.match(params["namespace"]):
        raise HTTPError(404, "not_found", "no such namespace: a namespace is an RFC 1123 label")
    if "name" in params and not DNS_SUBDOMAIN.match(params["name"]):
        raise HTTPError(404, "not_found", "no such AgentRun: a name is an RFC 1123 subdomain")
    if "thread_id" in params and not THREAD_ID.match(params["thread_id"]):
        raise HTTPError(404, "not_found", "no such thread")


def _int_param(request: requests.Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPError(422, "invalid", f"{name}: must be an integer") from None
    if not low <= value <= high:
        raise HTTPError(422, "invalid", f"{name}: must be between {low} and {high}")
    return value


def _error(status: int, error: str, message: str, *, headers: dict[str, str] | None = None,
           **extra: Any) -> responses.Response:
    return responses.JSONResponse({"error": error, "message": message, **extra}, status_code=status, headers=headers)


def serve(*, host: str | None = None, port: int | None = None) -> None:
    """Serve the gateway with uvicorn until SIGTERM/SIGINT; ``host``/``port`` override the settings.

    For ``agentrun gateway [--host H] [--port P]`` (the chart runs it so).
    """
    base = settings.load()
    log.configure(base.log_level, base.log_format)
    cfg = config.load()
    if host or port:
        cfg = cfg.model_copy(update={"host": host or cfg.host, "port": port or cfg.port})
    options: dict[str, Any] = {"host": cfg.host, "port": cfg.port, "proxy_headers": True,
                               "log_level": base.log_level.lower(), "access_log": False,
                               "timeout_graceful_shutdown": 5}
    app = create_app(cfg)  # refuses unsafe settings (ValueError) before anything listens
    if cfg.workers > 1:  # uvicorn's supervisor; each process builds its own app (and shared readers)
        os.environ.update(AGENTRUN_GATEWAY_HOST=cfg.host, AGENTRUN_GATEWAY_PORT=str(cfg.port))  # for worker_app
        uvicorn.run(f"{__name__}:worker_app", factory=True, workers=cfg.workers, **options)
    else:
        uvicorn.run(app, **options)


def worker_app() -> applications.Starlette:
    """The app of one of several gateway processes (``AGENTRUN_GATEWAY_WORKERS``)."""
    base = settings.load()
    log.configure(base.log_level, base.log_format)
    return create_app()


def main() -> None:
    """``python -m agentrun_gateway.app``: :func:`serve` with the settings from the environment."""
    serve()


if __name__ == "__main__":
    main()
