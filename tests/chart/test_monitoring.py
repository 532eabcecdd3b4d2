"""The monitoring parts: alert and dashboard queries parse as PromQL (with the ``promql-parser``
package, Python bindings of a Rust PromQL parser) and name only series the code exports (read
from the operator's, the workers' and the gateway's prometheus_client metrics, not from a list
kept here). ``tests/monitoring`` and ``tests/e2e/test_prometheus.py`` run them on a real Prometheus.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from typing import Any

import promql_parser
import pytest

from tests.chart.rendering import CHART, only, render

MONITORING = ("--values", str(CHART / "ci" / "monitoring-values.yaml"))
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__interval": "1m", "$namespace": ".*", "$pool": ".*"}


def _exposed(families: Iterable[Any]) -> set[str]:
    """The series names Prometheus sees for these metric families (counters get ``_total``)."""
    names: set[str] = set()
    for family in families:
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names |= {f"{family.name}{suffix}" for suffix in ("_bucket", "_sum", "_count")}
        else:
            names.add(family.name)
    return names


@functools.cache
def exported_metrics() -> frozenset[str]:
    """Every agentrun series the operator (its registry and scrape-time gauges), the workers and
    the gateway export."""
    from agentrun_gateway import metrics as gateway_metrics
    from agentrun_operator import metrics as operator_metrics
    from agentrun_worker import metrics as worker_metrics

    index: dict[Any, Any] = {}  # an empty run_phases index: the gauge families are still described
    return frozenset(_exposed(operator_metrics.REGISTRY.collect())
                     | _exposed(operator_metrics.IndexCollector(index).collect())
                     | _exposed(worker_metrics.families())
                     | _exposed(gateway_metrics.Metrics().registry.collect()))


def check_expr(expr: str) -> None:
    try:
        promql_parser.parse(expr)
    except ValueError as error:
        pytest.fail(f"not PromQL: {expr!r}: {error}")
    for name in set(re.findall(r"\b(agentrun_[a-z_]+)", expr)):
        assert name in exported_metrics(), f"{name} is not a series the operator, the workers or the gateway export"


def alerts() -> list[dict[str, Any]]:
    rule = only(render(*MONITORING), "PrometheusRule")
    [group] = rule["spec"]["groups"]
    rules: list[dict[str, Any]] = group["rules"]
    return rules


def test_the_alerts_that_matter_exist() -> None:
    names = {rule["alert"] for rule in alerts()}
    assert {"AgentRunOperatorDown", "AgentRunsStuck", "AgentRunBacklogGrowing", "AgentRunWorkersLost"} <= names


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_each_alert_is_valid_promql_on_exported_metrics(rule: dict[str, Any]) -> None:
    check_expr(rule["expr"])
    assert rule["labels"]["severity"] in ("critical", "warning")
    assert rule["labels"]["team"] == "platform"  # alertLabels of ci/monitoring-values.yaml
    assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_operator_down_watches_the_scraped_job() -> None:
    [down] = [r for r in alerts() if r["alert"] == "AgentRunOperatorDown"]
    assert down["expr"] == 'absent(up{job="demo-agentrun-operator", namespace="agents"} == 1)'
    service = only(render(), "Service")
    assert service["metadata"]["name"] == "demo-agentrun-operator"  # the ServiceMonitor's job label


def test_alert_thresholds_come_from_values() -> None:
    [stuck] = [r for r in alerts() if r["alert"] == "AgentRunsStuck"]
    assert "[60m]" in stuck["expr"]  # stuckRunsMinutes: 60 in ci/monitoring-values.yaml
    promql_parser.parse(stuck["expr"])


def test_promql_parser_refuses_bad_queries() -> None:
    with pytest.raises(ValueError):
        promql_parser.parse("sum(rate(agentrun_runs_finished_total[5m]) by")


def test_monitors_scrape_the_right_ports() -> None:
    docs = render(*MONITORING)
    [endpoint] = only(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint == {"port": "metrics", "path": "/metrics", "interval": "15s", "honorLabels": True}
    service = only(docs, "Service")
    assert service["spec"]["ports"][0]["name"] == "metrics" and service["spec"]["ports"][0]["port"] == 8080
    selector = only(docs, "ServiceMonitor")["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    pod_monitor = only(docs, "PodMonitor")
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "agentrun-worker",
                                                              "app.kubernetes.io/component": "worker"}
    scoped = only(render(*MONITORING, "--set", "watchNamespaces={team-a}"), "PodMonitor")
    assert scoped["spec"]["namespaceSelector"] == {"matchNames": ["team-a"]}
    for doc in docs:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            assert doc["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_grafana_dashboard_configmap() -> None:
    config_map = only(render(*MONITORING), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "agentrun"}
    dashboard = json.loads(config_map["data"]["agentrun.json"])
    assert dashboard == json.loads((CHART / "dashboards" / "agentrun.json").read_text())
    assert dashboard["uid"] and dashboard["title"]
    targets = [t for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(targets) >= 10
    variables = [{"expr": v["query"]["query"]} for v in dashboard["templating"]["list"] if v["type"] == "query"]
    for target in targets + variables:
        expr = target["expr"]
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        if expr.startswith("label_values("):  # Grafana's function, not PromQL: check its selector
            expr = expr.removeprefix("label_values(").rsplit(",", 1)[0]
        check_expr(expr)


def test_monitoring_is_off_by_default() -> None:
    kinds = {d["kind"] for d in render()}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"}
