"""Traces of a run, fanned out to whichever of OpenTelemetry, Langfuse and Sentry is configured.

The agent loop (``agent``) calls three context managers — :func:`invoke_agent` around the
whole loop, :func:`chat` around each model call, :func:`execute_tool` around each tool
call — and the actor wraps the run in :func:`identified`, so that an error escaping it carries
the run's identity to the ``middleware.ErrorReporting`` Dramatiq middleware, which reports it
(and configures the backends when a worker process boots). Each backend is optional:
none is imported unless it is configured, and the worker runs the same with none of them
installed.

- **OpenTelemetry** (``opentelemetry-api``): spans ``invoke_agent <agent>``, ``chat <model>``
  and ``execute_tool <tool>`` with the GenAI semantic-convention attributes
  (``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
  ``gen_ai.conversation.id`` = thread id, ``gen_ai.usage.*``, ``gen_ai.tool.*``), on the
  global tracer provider. When none is registered, the SDK is installed and
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``…_TRACES_ENDPOINT``) is set, an OTLP exporter is set up
  (standard ``OTEL_*`` variables). Message content is recorded only with
  ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``, as the conventions ask.
- **Langfuse** (``LANGFUSE_PUBLIC_KEY`` + ``LANGFUSE_SECRET_KEY``, ``LANGFUSE_HOST``): one
  trace per run (its id is the run uid), an ``agent`` observation for the run, a
  ``generation`` per model call (model, input, output, usage) and a ``tool`` observation per
  tool call; session = thread id, user = namespace. Langfuse gets a tracer provider of its
  own, so its observations and the OpenTelemetry spans never mix.
- **Sentry** (``AGENTRUN_SENTRY_DSN`` or ``SENTRY_DSN``): an *infrastructure* error (one
  without a ``reason``: the database went away, the API server failed…) is captured with the
  run's tags. An agent's own failure — ``BudgetExceeded``, the model refusing, a stop — is
  the run's outcome, not an exception event.

The run's identity (``run_id``, ``thread_id``, ``namespace``, ``name``, ``attempt``) is read
from structlog's context variables, bound once by ``execution.execute``: what labels the
run's log lines also labels its traces and error events.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import datetime
import json
import logging
import os
import re
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from agentrun_worker import outcome as run_outcome
    from agentrun_worker import tools
    from agentrun_worker.providers import base

logger = structlog.get_logger(__name__)

TRACER_NAME = "agentrun_worker"
IDENTITY = ("run_id", "thread_id", "namespace", "name", "attempt")
_SECRET_NAME = re.compile(r"KEY|SECRET|TOKEN|PASSWORD|PASSWD|DSN|CREDENTIAL", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]*):(?P<password>[^@\s/]+)@", re.IGNORECASE)


@dataclasses.dataclass
class Backends:
    """What this process sends traces and errors to (all None/False: nothing)."""

    otel: Any = None
    """An OpenTelemetry tracer, or None."""
    langfuse: Any = None
    """A ``langfuse.Langfuse`` client, or None."""
    sentry: bool = False
    capture_content: bool = False
    """Record message content on OpenTelemetry spans (Langfuse always gets it: it is its purpose)."""
    _provider: Any = None
    """A tracer provider this module created (and so flushes and shuts down)."""

    @property
    def names(self) -> list[str]:
        return [name for name, on in (("opentelemetry", self.otel is not None),
                                      ("langfuse", self.langfuse is not None), ("sentry", self.sentry)) if on]


_backends: Backends | None = None


def setup() -> Backends:
    """The process's backends, configured from the environment on first use."""
    global _backends
    if _backends is None:
        _backends = configure(os.environ)
    return _backends


def configure(environ: Mapping[str, str], *, tracer_provider: Any = None) -> Backends:
    """(Re)configure the backends; ``tracer_provider`` replaces the global OpenTelemetry one
    (tests give an SDK provider with an in-memory exporter)."""
    global _backends
    if _backends is not None:
        shutdown()
    backends = Backends(capture_content=environ.get(
        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "").lower() == "true")
    backends.otel, backends._provider = _setup_otel(environ, tracer_provider)
    backends.langfuse = _setup_langfuse(environ)
    backends.sentry = _setup_sentry(environ)
    _backends = backends
    if backends.names:
        logger.info("tracing.configured", backends=backends.names)
    return backends


def flush() -> None:
    """Send what the backends still buffer (at worker shutdown, and in tests)."""
    backends = _backends
    if backends is None:
        return
    if backends._provider is not None:
        backends._provider.force_flush()
    if backends.langfuse is not None:
        backends.langfuse.flush()
    if backends.sentry:
        import sentry_sdk

        sentry_sdk.flush(timeout=5)


def shutdown() -> None:
    """Flush and forget the backends (the next :func:`setup` configures them again)."""
    global _backends
    backends, _backends = _backends, None
    if backends is None:
        return
    with contextlib.suppress(Exception):
        if backends._provider is not None:
            backends._provider.shutdown()
        if backends.langfuse is not None:
            backends.langfuse.shutdown()
        if backends.sentry:
            import sentry_sdk

            sentry_sdk.flush(timeout=5)


# -- configuration of each backend --------------------------------------------------------------


def _setup_otel(environ: Mapping[str, str], provider: Any) -> tuple[Any, Any]:
    """The tracer, and the provider this module made (None when it is the user's)."""
    try:
        from opentelemetry import trace
    except ImportError as exc:
        if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            logger.warning("tracing.otel_unavailable", missing=exc.name, hint="pip install 'agentrun[observability]'")
        return None, None
    if provider is not None:
        return provider.get_tracer(TRACER_NAME), None
    if environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return None, None
    made = None
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        made = _otlp_provider(environ)
        if made is not None:
            trace.set_tracer_provider(made)
    current = trace.get_tracer_provider()
    if isinstance(current, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None, None  # nobody records: spans would cost time and go nowhere
    return current.get_tracer(TRACER_NAME), made


def _otlp_provider(environ: Mapping[str, str]) -> Any:
    """An SDK provider exporting OTLP, when an endpoint is configured and the packages exist."""
    if not (environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")):
        return None
    if environ.get("OTEL_TRACES_EXPORTER", "otlp").lower() == "none":
        return None
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") \
        or "http/protobuf"
    module = ("opentelemetry.exporter.otlp.proto.grpc.trace_exporter" if protocol == "grpc"
              else "opentelemetry.exporter.otlp.proto.http.trace_exporter")
    try:
        import importlib

        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        exporter = importlib.import_module(module).OTLPSpanExporter()
    except ImportError as exc:
        logger.warning("tracing.otlp_unavailable", protocol=protocol, missing=exc.name,
                       hint="pip install opentelemetry-sdk opentelemetry-exporter-otlp")
        return None
    attributes = {} if environ.get("OTEL_SERVICE_NAME") else {"service.name": "agentrun-worker"}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def _setup_langfuse(environ: Mapping[str, str]) -> Any:
    if not (environ.get("LANGFUSE_PUBLIC_KEY") and environ.get("LANGFUSE_SECRET_KEY")):
        return None
    try:
        import langfuse
        from opentelemetry.sdk.trace import TracerProvider
    except ImportError as exc:
        logger.warning("tracing.langfuse_unavailable", missing=exc.name, hint="pip install 'agentrun[observability]'")
        return None
    # A provider of its own: Langfuse neither takes over the global one (where it would also
    # export our GenAI spans a second time) nor adds its exporter to the user's.
    return langfuse.Langfuse(
        public_key=environ["LANGFUSE_PUBLIC_KEY"], secret_key=environ["LANGFUSE_SECRET_KEY"],
        base_url=environ.get("LANGFUSE_BASE_URL") or environ.get("LANGFUSE_HOST") or None,
        tracer_provider=TracerProvider(),
    )


def _setup_sentry(environ: Mapping[str, str]) -> bool:
    dsn = environ.get("AGENTRUN_SENTRY_DSN") or environ.get("SENTRY_DSN")
    if not dsn:
        return False
    try:
        import sentry_sdk
        from sentry_sdk.integrations.logging import LoggingIntegration
    except ImportError as exc:
        logger.warning("tracing.sentry_unavailable", missing=exc.name, hint="pip install 'agentrun[observability]'")
        return False
    client = sentry_sdk.get_client()
    if not client.is_active() or client.transport is None or str(client.dsn) != dsn:
        sentry_sdk.init(
            dsn=dsn,
            # No user data, no request bodies, no query data, and no frame locals: a frame's
            # locals may hold a key or a prompt.
            data_collection={"user_info": False, "http_bodies": [], "database_query_data": False,
                             "stack_frame_variables": False},
            # Errors are captured here, with the run's tags, on the actors' event loop. Dramatiq's
            # integration would capture the same failure again on its worker thread without them,
            # and the auto-enabled ones (openai, httpx…) would report a model's refusal, which is
            # the run's outcome, not a fault of the system; log records stay breadcrumbs.
            auto_enabling_integrations=False,
            integrations=[LoggingIntegration(level=logging.INFO, event_level=None)],
            before_send=_scrub_event,
        )
    return True


# -- the run's identity and secrets --------------------------------------------------------------


def identity() -> dict[str, str]:
    """The run's identity, as bound for its log lines."""
    bound = structlog.contextvars.get_contextvars()
    return {key: str(bound[key]) for key in IDENTITY if bound.get(key) is not None}


def _secrets() -> list[str]:
    """Values of this process's secret-looking environment variables (keys, tokens, DSNs)."""
    return sorted((v for k, v in os.environ.items() if _SECRET_NAME.search(k) and len(v) >= 6),
                  key=len, reverse=True)


def scrub(text: str, secrets: list[str] | None = None) -> str:
    """``text`` without URL passwords and without the values of secret environment variables."""
    text = _URL_PASSWORD.sub(r"\g<scheme>:***@", text)
    for secret in _secrets() if secrets is None else secrets:
        text = text.replace(secret, "***")
    return text


def _scrub_event(event: Any, hint: Any) -> Any:
    secrets = _secrets()

    def walk(value: Any) -> Any:
        if isinstance(value, str):
            return scrub(value, secrets)
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v) for v in value]
        return value

    return walk(event)


def expected(exc: BaseException) -> bool:
    """An agent's own failure (it names its ``reason``) or a cancellation: not a fault."""
    return isinstance(exc, asyncio.CancelledError) or hasattr(exc, "reason")


def capture(exc: BaseException) -> None:
    """Send an infrastructure error to Sentry (once), tagged with the run's identity: the one
    it carries (:func:`identified`), else the one bound where this is called."""
    if not setup().sentry or getattr(exc, "_agentrun_reported", False):
        return
    import sentry_sdk

    tags = getattr(exc, "_agentrun_identity", None) or identity()
    with sentry_sdk.new_scope() as scope:
        for key, value in tags.items():
            scope.set_tag(key, value)
        sentry_sdk.capture_exception(exc)
    with contextlib.suppress(AttributeError):
        exc._agentrun_reported = True  # type: ignore[attr-defined]


@contextlib.contextmanager
def identified() -> Iterator[None]:
    """Around a whole run (the actor): an error that escapes carries the run's identity, bound
    here in the run's coroutine. The ``ErrorReporting`` middleware reports it from Dramatiq's
    worker thread, where the run's log context is not bound."""
    try:
        yield
    except Exception as exc:
        if getattr(exc, "_agentrun_identity", None) is None:
            with contextlib.suppress(AttributeError):
                exc._agentrun_identity = identity()  # type: ignore[attr-defined]
        raise


# -- the three hooks ------------------------------------------------------------------------------


def _split_model(model: str) -> tuple[str, str]:
    """``("openai", "gpt-4o")`` for ``openai/gpt-4o``; ``("scripted", "scripted")``."""
    prefix, sep, name = model.partition("/")
    return (prefix, name) if sep and prefix and name else (model or "unknown", model or "unknown")


class Observation:
    """One span in each configured backend; the loop reports what happened through it."""

    def __init__(self, backends: Backends, otel_span: Any, langfuse: Any) -> None:
        self._backends = backends
        self.otel_span = otel_span
        self.langfuse = langfuse

    def _set(self, attributes: dict[str, Any]) -> None:
        if self.otel_span is not None:
            self.otel_span.set_attributes({k: v for k, v in attributes.items() if v is not None})

    def _content(self, key: str, value: Any) -> None:
        if self.otel_span is not None and self._backends.capture_content:
            self.otel_span.set_attribute(key, value if isinstance(value, str) else json.dumps(value, default=str))

    def _failed(self, exc: BaseException) -> None:
        error_type = getattr(exc, "reason", None) or type(exc).__qualname__
        if isinstance(exc, asyncio.CancelledError):
            # A stop, a deadline or a hand-back: the run was ended from outside, not broken.
            self._set({"agentrun.cancelled": True})
            if self.langfuse is not None:
                self.langfuse.update(level="WARNING", status_message="cancelled (stop, deadline or shutdown)")
            return
        if self.otel_span is not None:
            from opentelemetry.trace import Status, StatusCode

            secrets = _secrets()
            self.otel_span.set_attribute("error.type", error_type)
            self.otel_span.record_exception(exc, attributes={  # as the SDK records it, scrubbed
                "exception.message": scrub(str(exc), secrets),
                "exception.stacktrace": scrub("".join(traceback.format_exception(exc)), secrets)})
            self.otel_span.set_status(Status(StatusCode.ERROR, scrub(f"{error_type}: {exc}", secrets)))
        if self.langfuse is not None:
            self.langfuse.update(level="ERROR", status_message=f"{error_type}: {scrub(str(exc))}")

    def _end(self) -> None:
        if self.otel_span is not None:
            self.otel_span.end()
        if self.langfuse is not None:
            self.langfuse.end()


class RunObservation(Observation):
    def __init__(self, backends: Backends, otel_span: Any, langfuse: Any, langfuse_context: Any) -> None:
        super().__init__(backends, otel_span, langfuse)
        self.langfuse_context = langfuse_context
        self.provider = ""
        self.model = ""
        self.thread_id = ""
        self.parameters: dict[str, Any] = {}
        """The thinking settings the provider maps to the model's parameters."""

    def finished(self, outcome: run_outcome.Outcome) -> None:
        self._set({"gen_ai.usage.input_tokens": outcome.input_tokens,
                   "gen_ai.usage.output_tokens": outcome.output_tokens,
                   "agentrun.iterations": outcome.iterations, "agentrun.reason": outcome.reason})
        if self.langfuse is not None:
            self.langfuse.update(output=outcome.result, metadata={"reason": outcome.reason,
                                                                  "iterations": outcome.iterations})

    def _child(self, name: str, as_type: str, **fields: Any) -> Any:
        """A Langfuse observation under the run's, carrying the trace's session and user."""
        if self.langfuse is None:
            return None
        from opentelemetry import context

        token = context.attach(self.langfuse_context)
        try:
            return self.langfuse.start_observation(name=name, as_type=as_type, **fields)
        except Exception as exc:  # a tracing fault never fails a run
            logger.warning("tracing.langfuse_failed", error=str(exc))
            return None
        finally:
            context.detach(token)


class ChatObservation(Observation):
    def watch(self, on_delta: base.OnDelta) -> base.OnDelta:
        """``on_delta``, noting when the first chunk arrives (time to first chunk); itself
        when nothing is traced, so an untraced stream pays nothing."""
        if self.otel_span is None and self.langfuse is None:
            return on_delta
        started = time.perf_counter()
        seen = [False]

        def first_chunk(chunk: str) -> Any:
            if not seen[0]:
                seen[0] = True
                self._set({"gen_ai.response.time_to_first_chunk": time.perf_counter() - started})
                if self.langfuse is not None:
                    self.langfuse.update(completion_start_time=datetime.datetime.now(datetime.UTC))
            return on_delta(chunk)

        return first_chunk

    def finished(self, turn: base.Turn) -> None:
        self._set({"gen_ai.usage.input_tokens": turn.input_tokens,
                   "gen_ai.usage.output_tokens": turn.output_tokens,
                   "gen_ai.response.finish_reasons": ["tool_calls" if turn.tool_calls else "stop"]})
        output: dict[str, Any] = {"role": "assistant", "content": turn.text}
        if turn.tool_calls:
            output["tool_calls"] = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in turn.tool_calls]
        self._content("gen_ai.output.messages", [output])
        if self.langfuse is not None:
            self.langfuse.update(output=output, usage_details={"input": turn.input_tokens,
                                                               "output": turn.output_tokens})


class ToolObservation(Observation):
    def finished(self, result: tools.Result) -> None:
        self._content("gen_ai.tool.call.result", result.content)
        if result.error:
            if self.otel_span is not None:
                from opentelemetry.trace import Status, StatusCode

                self.otel_span.set_attribute("error.type", "ToolError")
                self.otel_span.set_status(Status(StatusCode.ERROR, result.content[:256]))
        if self.langfuse is not None:
            self.langfuse.update(output=result.content, level="ERROR" if result.error else None,
                                 status_message=result.content[:256] if result.error else None)


_current_run: contextvars.ContextVar[RunObservation | None] = contextvars.ContextVar("agentrun_run", default=None)


@contextlib.contextmanager
def invoke_agent(agent: dict[str, Any], *, run_id: str, thread_id: str, user_input: Any = None
                 ) -> Iterator[RunObservation]:
    """Around the agent loop of one run: the root of the run's trace."""
    backends = setup()
    ident = identity()
    agent_name = str(agent.get("name") or ident.get("name") or "agent")
    provider, model = _split_model(str(agent.get("model", "")))
    lf_obs = lf_ctx = None
    if backends.langfuse is not None:  # first, so that no OpenTelemetry span of ours is current
        try:
            lf_obs, lf_ctx = _langfuse_root(backends.langfuse, agent_name, run_id, thread_id, user_input, ident,
                                            model)
        except Exception as exc:  # a tracing fault never fails a run
            logger.warning("tracing.langfuse_failed", error=str(exc))
    attributes = {k: v for k, v in {
        "gen_ai.operation.name": "invoke_agent", "gen_ai.provider.name": provider, "gen_ai.system": provider,
        "gen_ai.agent.name": agent_name, "gen_ai.request.model": model, "gen_ai.conversation.id": thread_id,
        "agentrun.run_id": run_id, "agentrun.namespace": ident.get("namespace"),
        "agentrun.name": ident.get("name"), "agentrun.attempt": ident.get("attempt"),
    }.items() if v is not None}
    with _spans(backends, f"invoke_agent {agent_name}", "INTERNAL", attributes, lambda: lf_obs) as (otel_span, _):
        run = RunObservation(backends, otel_span, lf_obs, lf_ctx)
        run.provider, run.model, run.thread_id = provider, model, thread_id
        run.parameters = {k: v for k, v in (("reasoning_effort", agent.get("reasoningEffort")),
                                            ("enable_thinking", agent.get("enableThinking"))) if v}
        token = _current_run.set(run)
        try:
            yield run
        except BaseException as exc:
            run._failed(exc)
            if not expected(exc):
                capture(exc)
            raise
        finally:
            _current_run.reset(token)


@contextlib.contextmanager
def _spans(backends: Backends, name: str, kind: str, attributes: dict[str, Any],
           langfuse: Callable[[], Any]) -> Iterator[tuple[Any, Any]]:
    """One step's OpenTelemetry span (``kind``: a ``SpanKind`` name), current inside the block,
    and its Langfuse observation (made by ``langfuse`` once the span is current); None for a
    backend that is off. Both end with the block; failures are recorded by the caller."""
    otel_cm: Any = None
    otel_span = None
    if backends.otel is not None:
        from opentelemetry.trace import SpanKind

        otel_cm = backends.otel.start_as_current_span(
            name, kind=SpanKind[kind], record_exception=False, set_status_on_exception=False, attributes=attributes)
        otel_span = otel_cm.__enter__()
    lf_obs = langfuse()
    try:
        yield otel_span, lf_obs
    finally:
        if otel_cm is not None:
            otel_cm.__exit__(None, None, None)
        if lf_obs is not None:
            lf_obs.end()


def _langfuse_root(client: Any, agent_name: str, run_id: str, thread_id: str, user_input: Any,
                   ident: dict[str, str], model: str) -> tuple[Any, Any]:
    from langfuse import propagate_attributes
    from opentelemetry import context

    metadata = {k: v for k, v in ident.items() if k in ("namespace", "name", "run_id", "attempt")}
    with propagate_attributes(session_id=thread_id, user_id=ident.get("namespace"), metadata=metadata,
                              trace_name=agent_name, tags=["agentrun"]):
        observation = client.start_observation(
            trace_context={"trace_id": run_id.replace("-", "").lower()}, name=agent_name, as_type="agent",
            input=user_input, metadata={**metadata, "model": model})
        # Kept to open the run's children with the same trace attributes (session, user).
        return observation, context.get_current()


@contextlib.contextmanager
def chat(messages: list[dict[str, Any]], *, iteration: int) -> Iterator[ChatObservation]:
    """Around one model call of the current run."""
    run: RunObservation | None = _current_run.get()
    if run is None:
        yield ChatObservation(Backends(), None, None)
        return
    attributes = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": run.provider,
                  "gen_ai.system": run.provider, "gen_ai.request.model": run.model,
                  "gen_ai.conversation.id": run.thread_id, "agentrun.iteration": iteration}
    with _spans(run._backends, f"chat {run.model}", "CLIENT", attributes, lambda: run._child(
            f"chat {run.model}", "generation", model=run.model, input=list(messages),
            model_parameters=run.parameters or None, metadata={"iteration": iteration})) as (otel_span, lf_obs):
        observation = ChatObservation(run._backends, otel_span, lf_obs)
        observation._content("gen_ai.input.messages", messages)
        try:
            yield observation
        except BaseException as exc:
            observation._failed(exc)
            raise


@contextlib.contextmanager
def execute_tool(name: str, *, call_id: str, arguments: str) -> Iterator[ToolObservation]:
    """Around one tool call of the current run."""
    run: RunObservation | None = _current_run.get()
    if run is None:
        yield ToolObservation(Backends(), None, None)
        return
    attributes = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name,
                  "gen_ai.tool.call.id": call_id, "gen_ai.tool.type": "function",
                  "gen_ai.conversation.id": run.thread_id}
    with _spans(run._backends, f"execute_tool {name}", "INTERNAL", attributes, lambda: run._child(
            name, "tool", input=arguments, metadata={"call_id": call_id})) as (otel_span, lf_obs):
        observation = ToolObservation(run._backends, otel_span, lf_obs)
        observation._content("gen_ai.tool.call.arguments", arguments)
        try:
            yield observation
        except BaseException as exc:
            observation._failed(exc)
            raise
