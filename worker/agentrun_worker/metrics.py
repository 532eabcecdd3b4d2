"""Prometheus metrics of a worker pod, served on ``http://<pod>:9191/metrics``.

``actors`` adds :class:`Metrics` to the broker; ``execution`` counts runs with
:func:`run_started`, :func:`in_flight` and :func:`run_finished`. Two kinds of series:

- **Dramatiq's**: ``dramatiq_messages_total``, ``dramatiq_message_errors_total``,
  ``dramatiq_message_retries_total``, ``dramatiq_message_rejects_total``,
  ``dramatiq_messages_inprogress``, ``dramatiq_delayed_messages_inprogress`` and
  ``dramatiq_message_duration_milliseconds``, with the names, labels and buckets of Dramatiq's
  Prometheus middleware, so dashboards made for Dramatiq work. Dramatiq 1.x put that middleware
  on every broker and 2.x no longer does; in both it writes to one fixed directory
  (``/tmp/dramatiq-prometheus``) shared by every Dramatiq process of the machine and never
  cleared. So the broker is built without it in every version (``agentrun.broker``) and this
  middleware records the same series.
- **agentrun's**: runs started, in flight, and finished by phase and reason.

``dramatiq agentrun_worker.actors --processes N`` forks N worker processes and, once they are
up, one process for each middleware ``fork``. Every worker process records its samples in
prometheus_client's multiprocess files; the fork process of this middleware (:func:`serve`)
reads all of them and serves the sum on ``AGENTRUN_METRICS_PORT`` (9191; 0 turns it off).
The files live in a directory of their own per ``dramatiq`` command, named after the
process that started the workers (pid and start time; see :func:`directory`), so two workers on
one machine never add up each other's samples and a container restarted in the same pod (its
``/tmp`` survives) starts from zero. Directories of commands that are gone are removed when a
worker process boots.

In ``agentrun dev`` the worker runs in the dev process, where no process boots: the dev
worker records the same series in memory and serves them on a port of its own that the
kernel picks (:func:`serve_in_process`); ``agentrun dev`` prints the address.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import shutil
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import dramatiq
import dramatiq.broker
import prometheus_client
import prometheus_client.multiprocess
import prometheus_client.values
import structlog

from agentrun_worker import config as worker_settings

logger = structlog.get_logger(__name__)

BASE = pathlib.Path(tempfile.gettempdir()) / "agentrun-worker-metrics"
"""Where the directories of the multiprocess files are (``/tmp`` in a pod: an ``emptyDir``)."""

MESSAGE_LABELS = ("queue_name", "actor_name")
DURATION_BUCKETS_MS = (5, 10, 25, 50, 75, 100, 250, 500, 750, 1000, 2500, 5000, 7500, 10000, 30000, 60000,
                       600000, 900000, float("inf"))
"""Dramatiq's buckets of ``dramatiq_message_duration_milliseconds``."""


class _Series:
    """Every series of this process: unregistered in a worker process (the exposition reads the
    multiprocess files), in a registry of its own in ``agentrun dev``."""

    def __init__(self, registry: prometheus_client.CollectorRegistry | None = None) -> None:
        def counter(name: str, text: str, labels: tuple[str, ...] = MESSAGE_LABELS) -> prometheus_client.Counter:
            return prometheus_client.Counter(name, text, labels, registry=registry)

        def gauge(name: str, text: str, labels: tuple[str, ...] = MESSAGE_LABELS) -> prometheus_client.Gauge:
            # livesum: the sum over the worker processes alive now (a dead one's runs are not in flight)
            return prometheus_client.Gauge(name, text, labels, registry=registry, multiprocess_mode="livesum")

        self.messages = counter("dramatiq_messages_total", "The total number of messages processed.")
        self.errors = counter("dramatiq_message_errors_total", "The total number of errored messages.")
        self.retries = counter("dramatiq_message_retries_total", "The total number of retried messages.")
        self.rejects = counter("dramatiq_message_rejects_total", "The total number of dead-lettered messages.")
        self.inprogress = gauge("dramatiq_messages_inprogress", "The number of messages in progress.")
        self.delayed = gauge("dramatiq_delayed_messages_inprogress", "The number of delayed messages in memory.")
        self.durations = prometheus_client.Histogram(
            "dramatiq_message_duration_milliseconds", "The time spent processing messages.", MESSAGE_LABELS,
            buckets=DURATION_BUCKETS_MS, registry=registry)
        self.runs_started = counter(
            "agentrun_worker_runs_started_total",
            "Runs this worker started (phase Running); duplicates and stale deliveries are not counted.",
            ("queue_name",))
        self.runs_in_flight = gauge(
            "agentrun_worker_runs_in_flight", "Runs this worker executes now.", ("queue_name",))
        self.runs_finished = counter(
            "agentrun_worker_runs_finished_total",
            "Runs this worker ended, by terminal phase and status.reason.", ("queue_name", "phase", "reason"))


_series: _Series | None = None
"""Set when a worker process boots with metrics on; None elsewhere (the hooks do nothing)."""


def _process_key(pid: int) -> str:
    """``<pid>-<start time>``: one process for ever (a pid is reused, never with the same start time).

    The start time is field 22 of ``/proc/<pid>/stat``; without ``/proc`` it is ``0``.
    """
    try:
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
        return f"{pid}-{stat.rsplit(')', 1)[1].split()[19]}"
    except (OSError, IndexError):
        return f"{pid}-0"


def directory() -> pathlib.Path:
    """The multiprocess directory of this ``dramatiq`` command.

    Worker processes and fork processes of one command share their parent (the ``dramatiq``
    main process, or the forkserver of Python 3.14), so they all name the same directory.
    """
    return BASE / _process_key(os.getppid())


def _remove_stale() -> None:
    """Remove the directories of ``dramatiq`` commands whose process is gone."""
    with contextlib.suppress(OSError):
        for path in BASE.iterdir():
            pid, _, start = path.name.partition("-")
            if pid.isdigit() and start not in ("", "0") and _process_key(int(pid)) != path.name:
                shutil.rmtree(path, ignore_errors=True)


def _record_in(path: pathlib.Path) -> None:
    """Make prometheus_client write this process's samples into ``path``."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    # prometheus_client picks multiprocess values from that variable when it is first imported,
    # which happened (with this module) before the directory was known: let it pick again.
    prometheus_client.values.ValueClass = prometheus_client.values.get_value_class()  # type: ignore[no-untyped-call]


class Metrics(dramatiq.Middleware):
    """Records Dramatiq's message series in every worker process; :func:`serve` is its fork."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._started: dict[str, float] = {}
        self._delayed: set[str] = set()

    @property
    def forks(self) -> list[Any]:
        return [serve] if self.port else []

    def after_process_boot(self, broker: dramatiq.Broker) -> None:
        global _series
        if not self.port:
            return
        _remove_stale()
        path = directory()
        path.mkdir(parents=True, exist_ok=True)
        _record_in(path)
        _series = _Series()

    def after_worker_shutdown(self, broker: dramatiq.Broker, worker: dramatiq.Worker) -> None:
        if _series is not None:  # its in-flight gauges no longer count
            prometheus_client.multiprocess.mark_process_dead(os.getpid(), str(directory()))  # type: ignore[no-untyped-call]

    def after_nack(self, broker: dramatiq.Broker, message: dramatiq.broker.MessageProxy) -> None:
        if _series is not None:
            _series.rejects.labels(message.queue_name, message.actor_name).inc()

    def after_enqueue(self, broker: dramatiq.Broker, message: dramatiq.Message[Any], delay: int | None) -> None:
        if _series is not None and "retries" in message.options:
            _series.retries.labels(message.queue_name, message.actor_name).inc()

    def before_delay_message(self, broker: dramatiq.Broker, message: dramatiq.broker.MessageProxy) -> None:
        if _series is not None:
            self._delayed.add(message.message_id)
            _series.delayed.labels(message.queue_name, message.actor_name).inc()

    def before_process_message(self, broker: dramatiq.Broker, message: dramatiq.broker.MessageProxy) -> None:
        if _series is None:
            return
        labels = (message.queue_name, message.actor_name)
        if message.message_id in self._delayed:
            self._delayed.discard(message.message_id)
            _series.delayed.labels(*labels).dec()
        _series.inprogress.labels(*labels).inc()
        self._started[message.message_id] = time.monotonic()

    def after_process_message(self, broker: dramatiq.Broker, message: dramatiq.broker.MessageProxy, *,
                              result: Any | None = None, exception: BaseException | None = None) -> None:
        if _series is None:
            return
        labels = (message.queue_name, message.actor_name)
        started = self._started.pop(message.message_id, time.monotonic())
        _series.durations.labels(*labels).observe((time.monotonic() - started) * 1000)
        _series.inprogress.labels(*labels).dec()
        _series.messages.labels(*labels).inc()
        if exception is not None:
            _series.errors.labels(*labels).inc()

    def after_skip_message(self, broker: dramatiq.Broker, message: dramatiq.broker.MessageProxy) -> None:
        self.after_process_message(broker, message)


def families() -> list[prometheus_client.Metric]:
    """Every metric family a worker serves, without samples (the chart's tests check the
    dashboard's queries against them)."""
    return [family for metric in vars(_Series()).values() for family in metric.collect()]


def run_started(queue: str) -> None:
    if _series is not None:
        _series.runs_started.labels(queue).inc()


@contextlib.contextmanager
def in_flight(queue: str) -> Iterator[None]:
    """Counts the run in ``agentrun_worker_runs_in_flight`` for the block."""
    if _series is None:
        yield
        return
    gauge = _series.runs_in_flight.labels(queue)
    gauge.inc()
    try:
        yield
    finally:
        gauge.dec()


def run_finished(queue: str, phase: str, reason: str) -> None:
    if _series is not None:
        _series.runs_finished.labels(queue, phase, reason).inc()


def serve() -> int:
    """The fork process: serve the samples of every worker process of this command on ``/metrics``.

    A port that cannot be bound is logged and ends this process only: the workers go on
    running agents, and Prometheus reports the target down (``up == 0``).
    """
    port = worker_settings.load().metrics_port
    path = directory()
    path.mkdir(parents=True, exist_ok=True)
    registry = prometheus_client.CollectorRegistry()
    prometheus_client.multiprocess.MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    try:
        _, thread = prometheus_client.start_http_server(port, addr="0.0.0.0", registry=registry)  # noqa: S104
    except OSError as exc:
        logger.error("worker.metrics_unavailable", port=port, error=str(exc))
        return 1
    logger.info("worker.metrics_serving", port=port, path="/metrics")
    thread.join()
    return 0


def serve_in_process(host: str = "127.0.0.1") -> str:
    """``agentrun dev``: record this process's series in memory and serve them on a port the
    kernel picks (two dev stacks on one machine never clash); returns the URL."""
    global _series
    registry = prometheus_client.CollectorRegistry()
    _series = _Series(registry)
    server, _ = prometheus_client.start_http_server(0, addr=host, registry=registry)
    url = f"http://{host}:{server.server_port}/metrics"
    logger.info("worker.metrics_serving", url=url)
    return url
