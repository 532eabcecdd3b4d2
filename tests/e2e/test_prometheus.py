"""A real Prometheus scraping the real operator and worker processes, as the chart says to.

One Prometheus (Debian's 2.42) for the module, with its own config, data directory and free
port, scraping every second. Its scrape jobs are made from the rendered chart (monitoring
scenario): the operator's ServiceMonitor (job = its Service's name, path, ``honorLabels``) and
the workers' PodMonitor (job ``<namespace>/<name>``, path). There is no Kubernetes service
discovery here, so each target carries, as target labels, the labels the Prometheus Operator
would give it from discovery — ``namespace`` (the Service's, or the worker pod's), ``pod``,
``container``, ``endpoint``, and ``service`` for the operator — and the queries below, with their
label selectors, match exactly as they would in a cluster. Each process listens on a free port
(``AGENTRUN_METRICS_PORT``) instead of the chart's 8080 and 9191; the path is the chart's.
Targets are files Prometheus watches (``file_sd_configs``), so a worker started later is
scraped at once. The chart's alert rules are loaded too.

Then the exact PromQL of the KEDA trigger (``autoscalers.scaled_object_for``) and of the
prometheus-adapter rule (``examples/cluster/helm/prometheus-adapter-values.yaml``, filled in
the way the adapter fills it for the HPA the operator builds) is evaluated through
``/api/v1/query`` while runs queue and drain, and must equal the operator's own backlog
within two scrape intervals; and every query of the Grafana dashboard is evaluated.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import yaml

from agentrun import kube
from tests.chart.rendering import CHART, only
from tests.e2e import harness
from tests.e2e.scenarios import agentrun, sample
from tests.monitoring import prometheus

pytestmark = pytest.mark.e2e

SCRAPE_SECONDS = 1.0
ADAPTER_VALUES = prometheus.ROOT / "examples" / "cluster" / "helm" / "prometheus-adapter-values.yaml"
STEP = [{"text": " ".join(f"word{i}" for i in range(8)), "chunkDelayMs": 100}]  # ~0.8 s a run


class Jobs:
    """The scrape jobs the chart's ServiceMonitor and PodMonitor describe, and their targets' labels."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.service_monitor = only(docs, "ServiceMonitor")
        self.pod_monitor = only(docs, "PodMonitor")
        self.service = only(docs, "Service")
        [self.operator_endpoint] = self.service_monitor["spec"]["endpoints"]
        [self.worker_endpoint] = self.pod_monitor["spec"]["podMetricsEndpoints"]
        # the Prometheus Operator's job labels: the Service's name; <namespace>/<name> of the PodMonitor
        self.operator = self.service["metadata"]["name"]
        self.worker = f"{self.pod_monitor['metadata']['namespace']}/{self.pod_monitor['metadata']['name']}"

    def configs(self) -> list[dict[str, Any]]:
        return [
            {"job_name": self.operator, "metrics_path": self.operator_endpoint["path"],
             "honor_labels": bool(self.operator_endpoint.get("honorLabels", False))},
            {"job_name": self.worker, "metrics_path": self.worker_endpoint["path"],
             "honor_labels": bool(self.worker_endpoint.get("honorLabels", False))},
        ]

    def operator_labels(self) -> dict[str, str]:
        meta = self.service["metadata"]
        return {"job": self.operator, "namespace": meta["namespace"], "service": meta["name"],
                "pod": f"{meta['name']}-0", "container": "operator", "endpoint": self.operator_endpoint["port"]}

    def worker_labels(self, namespace: str, pod: str) -> dict[str, str]:
        return {"job": self.worker, "namespace": namespace, "pod": pod, "container": "worker",
                "endpoint": self.worker_endpoint["port"]}


def address(proc: harness.Proc) -> str:
    assert proc.metrics_url is not None
    return re.sub(r"^http://|/metrics$", "", proc.metrics_url)


@pytest.fixture(scope="module")
def jobs() -> Jobs:
    return Jobs(prometheus.rendered())


@pytest.fixture(scope="module")
def prom(tmp_path_factory: pytest.TempPathFactory, bed: harness.Bed, operator: Any,
         jobs: Jobs) -> Iterator[prometheus.Server]:
    workdir = tmp_path_factory.mktemp("prometheus")
    rules = prometheus.chart_rules(workdir / "agentrun-rules.yaml")
    server = prometheus.Server(workdir, jobs.configs(), rule_files=[rules],
                               scrape_interval=f"{int(SCRAPE_SECONDS)}s").start()
    try:
        server.write_targets(jobs.operator, [(address(operator.proc), jobs.operator_labels())])
        harness.wait_until(lambda: server.targets_up(jobs.operator, 1), 15, "the operator to be scraped",
                           interval=0.1)
        yield server
    finally:
        server.stop()


def test_prometheus_scrapes_the_operator_as_the_service_monitor_says_and_the_chart_s_rules_run(
    prom: prometheus.Server, jobs: Jobs
) -> None:
    labels = jobs.operator_labels()
    # The chart's own "operator down" expression sees the operator up, through the same labels
    assert prom.value(f'up{{job="{labels["job"]}", namespace="{labels["namespace"]}"}}') == 1
    # Every rule of the chart is loaded and evaluates without error; none fires
    def evaluated() -> list[dict[str, Any]]:
        rules = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
        done = rules and all(r["health"] == "ok" and not r["lastEvaluation"].startswith("0001") for r in rules)
        return rules if done else []

    rules = harness.wait_until(evaluated, 10, "the chart's rules to be evaluated", interval=0.2)
    expected = {r["alert"] for r in only(prometheus.rendered(), "PrometheusRule")["spec"]["groups"][0]["rules"]}
    assert {r["name"] for r in rules} == expected
    # (AgentRunOperatorDown may be pending from an evaluation before the first scrape: it must clear)
    def active() -> list[str]:
        return [r["name"] for g in prom.api("rules")["groups"] for r in g["rules"] if r["state"] != "inactive"]

    harness.wait_until(lambda: active() == [], 5, "no alert pending or firing", interval=0.2)


def keda_query(pool: dict[str, Any]) -> str:
    from agentrun_operator import autoscalers, config

    [trigger] = autoscalers.scaled_object_for(pool, config.load())["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    return str(trigger["metadata"]["query"])


def adapter_queries(pool: dict[str, Any]) -> tuple[str, str]:
    """``(seriesQuery, metricsQuery)`` of the adapter's external rule, for the HPA of ``pool``.

    prometheus-adapter answers the HPA's External metric (name, selector, the HPA's namespace)
    with the rule's ``metricsQuery`` where ``<<.Series>>`` is the metric of ``seriesQuery`` and
    ``<<.LabelMatchers>>`` the selector's labels plus ``namespace`` (the rule maps that label to
    the namespace resource).
    """
    from agentrun_operator import autoscalers

    [rule] = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["external"]
    hpa = autoscalers.hpa_for(pool)
    [metric] = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == rule["name"]["as"]
    matchers = {**metric["external"]["metric"]["selector"]["matchLabels"],
                rule["resources"]["overrides"]["namespace"]["resource"]: hpa["metadata"]["namespace"]}
    series = rule["seriesQuery"].split("{", 1)[0]
    query = (rule["metricsQuery"].replace("<<.Series>>", series)
             .replace("<<.LabelMatchers>>", ",".join(f'{k}="{v}"' for k, v in sorted(matchers.items()))))
    return str(rule["seriesQuery"]), query


class Follower(threading.Thread):
    """Polls the operator's own backlog and the queries, from before the first run until stopped,
    and records how long the queries take to report each new value of the operator's."""

    def __init__(self, prom: prometheus.Server, operator_backlog: Callable[[], float | None],
                 queries: list[str]) -> None:
        super().__init__(daemon=True)
        self.prom, self.operator_backlog, self.queries = prom, operator_backlog, queries
        self.lags: list[tuple[float | None, float]] = []
        """(backlog, seconds from the operator reporting it to every query reporting it)"""
        self.state: tuple[float | None, bool] = (None, False)
        """The operator's latest backlog, and whether every query reports it."""
        self.error: BaseException | None = None
        self._stopping = threading.Event()

    def run(self) -> None:
        changed = (self.operator_backlog(), time.monotonic())
        caught_up = False
        try:
            while not self._stopping.is_set():
                backlog = self.operator_backlog()
                if backlog != changed[0]:
                    changed, caught_up = (backlog, time.monotonic()), False
                if not caught_up and all(self.prom.value(q) == backlog for q in self.queries):
                    self.lags.append((backlog, time.monotonic() - changed[1]))
                    caught_up = True
                self.state = (backlog, caught_up)
                time.sleep(0.02)
        except BaseException as exc:  # reported by wait_for
            self.error = exc

    def wait_for(self, backlog: float, timeout: float) -> None:
        def there() -> bool:
            if self.error is not None:
                raise self.error
            return self.state == (backlog, True)

        try:
            harness.wait_until(there, timeout, f"the queries to report the operator's backlog {backlog}")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: state {self.state}, lags {self.lags}, "
                                 f"{[(q, self.prom.value(q)) for q in self.queries]}") from None

    def stop(self) -> None:
        self._stopping.set()
        self.join(5)


def pool_backlog(bed: harness.Bed, namespace: str) -> int:
    """Queued plus running runs in the pool's status, as the operator's autoscaler wrote them."""
    status = kube.to_dict(bed.api.get(kube.WorkerPool, "default", namespace=namespace)).get("status") or {}
    return int(status.get("queued", 0)) + int(status.get("running", 0))


def test_the_keda_and_adapter_queries_equal_the_operator_s_backlog_as_runs_queue_and_drain(
    bed: harness.Bed, operator: Any, namespace: str, prom: prometheus.Server, jobs: Jobs
) -> None:
    pool = kube.to_dict(bed.api.get(kube.WorkerPool, "default", namespace=namespace))
    keda = keda_query(pool)
    series_query, adapter = adapter_queries(pool)
    assert keda == f'sum(agentrun_pool_backlog_runs{{namespace="{namespace}",pool="default"}})'

    def operator_backlog() -> float | None:
        """The operator's own figure, from its /metrics (what its autoscaler and the pool status use)."""
        return sample(operator.proc, "agentrun_pool_backlog_runs", namespace=namespace, pool="default")

    follower = Follower(prom, operator_backlog, [keda, adapter])
    follower.start()
    try:
        # Given three runs queued on a pool with no worker
        for i in range(3):
            bed.create(agentrun(namespace, f"run-{i}", STEP))
        for i in range(3):
            bed.wait_phase(namespace, f"run-{i}", "Queued")
        # Then both queries report the operator's backlog of 3, which its pool status says too
        follower.wait_for(3, 15)
        harness.wait_until(lambda: pool_backlog(bed, namespace) == 3, 5, "the pool's status to say 3")
        # And the adapter's seriesQuery finds the pool's series
        found = prom.api("series", **{"match[]": series_query})
        assert any(s["namespace"] == namespace and s["pool"] == "default" for s in found), found

        # When a worker (one thread: one run at a time) drains them
        worker = bed.start_worker(f"agentrun.{namespace}.default", threads=1)
        prom.write_targets(jobs.worker, [(address(worker), jobs.worker_labels(namespace, "default-workers-0"))])
        follower.wait_for(0, 30)
        for i in range(3):
            assert bed.wait_phase(namespace, f"run-{i}", "Succeeded", "Failed")["status"]["phase"] == "Succeeded"
        assert pool_backlog(bed, namespace) == 0
    finally:
        follower.stop()

    # Then every value the operator reported on the way reached both queries within two scrape intervals
    print("lags (backlog, seconds):", [(b, round(seconds, 3)) for b, seconds in follower.lags])  # pytest -s
    backlogs = [b for b, _ in follower.lags]
    assert 3 in backlogs and backlogs[-1] == 0, follower.lags  # (a change quicker than a scrape is skipped)
    slow = [(b, round(s, 2)) for b, s in follower.lags if s > 2 * SCRAPE_SECONDS]
    assert slow == [], f"lags (backlog, seconds): {follower.lags}"
    # And Prometheus scraped the worker as the PodMonitor says: its runs, by the pod's namespace
    harness.wait_until(lambda: prom.targets_up(jobs.worker, 1), 10, "the worker to be scraped", interval=0.1)
    finished = f'sum(agentrun_worker_runs_finished_total{{namespace="{namespace}", phase="Succeeded"}})'
    prometheus.wait_value(prom, finished, 3, 2 * SCRAPE_SECONDS + 1)
    # (Dramatiq counts a message after its actor returned, a moment after the run counted itself)
    prometheus.wait_value(prom, f'sum(dramatiq_messages_total{{namespace="{namespace}"}})', 3, 2 * SCRAPE_SECONDS + 1)


GRAFANA_VARIABLES = {
    # "All" of a multi-value variable: Grafana sends its allValue
    "$namespace": ".*", "$pool": ".*",
    # Grafana's $__rate_interval is max($__interval + scrape interval, 4 x scrape interval)
    "$__rate_interval": f"{int(4 * SCRAPE_SECONDS)}s", "$__interval": f"{int(SCRAPE_SECONDS)}s",
}


def grafana(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


def test_every_dashboard_query_runs_on_prometheus(prom: prometheus.Server) -> None:
    # the dashboard as the chart ships it (its ConfigMap)
    config_map = only(prometheus.rendered(), "ConfigMap")
    dashboard = json.loads(config_map["data"]["agentrun.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "agentrun.json").read_text())
    now = time.time()
    answered: dict[str, int] = {}
    for panel in dashboard["panels"]:
        for target in panel.get("targets") or []:
            # panels run range queries: the last minute, one point per scrape interval
            data = prom.api("query_range", query=grafana(target["expr"]), start=now - 60, end=now,
                            step=SCRAPE_SECONDS)
            answered[target["expr"]] = len(data["result"])
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        # label_values(selector, label) is Grafana's: it asks the label values API with match[]
        call = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", variable["query"]["query"])
        assert call is not None, f"a variable query the test cannot run: {variable['query']['query']}"
        selector, label = call.groups()
        answered[variable["name"]] = len(prom.api(f"label/{label}/values", **{"match[]": grafana(selector)}))
    # (an empty answer is fine; the operator's own panel has data, the job named as the chart names it)
    assert answered['max(up{job=~".*agentrun-operator.*"})'] == 1, answered


def test_prometheus_refuses_what_is_not_promql(prom: prometheus.Server) -> None:
    with pytest.raises(AssertionError, match="bad_data"):
        prom.api("query", query="sum(rate(agentrun_runs_finished_total[5m]) by")
    with pytest.raises(AssertionError, match="bad_data"):
        prom.api("query", query="no_such_function(agentrun_runs)")
