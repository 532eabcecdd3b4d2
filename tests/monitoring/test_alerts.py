"""The chart's alerts through the real ``promtool`` (Debian's Prometheus 2.42).

The rule file is generated from the PrometheusRule the real ``helm`` renders (the monitoring
scenario); the cases live in ``alerts.test.yaml`` next to this file: for every alert, series that
fire it (labels and annotations as Alertmanager would get them) and series that do not.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.monitoring import prometheus

HERE = pathlib.Path(__file__).resolve().parent
CASES = HERE / "alerts.test.yaml"


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The chart's rules, as ``agentrun-rules.yaml`` beside a copy of the cases (promtool reads
    ``rule_files`` relative to the test file)."""
    workdir = tmp_path_factory.mktemp("promtool")
    shutil.copy(CASES, workdir / CASES.name)
    [rule_file] = yaml.safe_load(CASES.read_text())["rule_files"]
    return prometheus.chart_rules(workdir / rule_file)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([prometheus.binary("promtool"), *args], capture_output=True, text=True, timeout=60,
                          check=False)


def chart_alerts(rules: pathlib.Path) -> list[str]:
    return [rule["alert"] for group in yaml.safe_load(rules.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule]


def test_promtool_checks_the_chart_s_rules(rules: pathlib.Path) -> None:
    result = promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(chart_alerts(rules))} rules found" in result.stdout


def test_every_alert_fires_and_stays_quiet_as_its_cases_say(rules: pathlib.Path) -> None:
    result = promtool("test", "rules", str(rules.parent / CASES.name))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_of_the_chart_has_a_case_that_fires_it_and_one_that_does_not(rules: pathlib.Path) -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in yaml.safe_load(CASES.read_text())["tests"]:
        check: dict[str, Any]
        for check in case.get("alert_rule_test") or []:
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = set(chart_alerts(rules))
    assert alerts, "the chart renders no alert"
    assert not alerts - fires, f"alerts without a case that fires them: {sorted(alerts - fires)}"
    assert not alerts - quiet, f"alerts without a case that keeps them quiet: {sorted(alerts - quiet)}"
    assert not (fires | quiet) - alerts, f"cases of alerts the chart lacks: {sorted((fires | quiet) - alerts)}"


def test_a_broken_case_fails(rules: pathlib.Path, tmp_path: pathlib.Path) -> None:
    # Given a case whose expectation is wrong (the operator up, the alert expected anyway)
    cases = yaml.safe_load(CASES.read_text())
    [up] = [case for case in cases["tests"] if case["name"] == "the operator up"]
    up["alert_rule_test"][0]["exp_alerts"] = [{"exp_labels": {"severity": "critical", "team": "platform"}}]
    shutil.copy(rules, tmp_path / rules.name)
    (tmp_path / "broken.test.yaml").write_text(yaml.safe_dump({**cases, "tests": [up]}))
    # When promtool runs it, then it fails (so the passing run above means something)
    result = promtool("test", "rules", str(tmp_path / "broken.test.yaml"))
    assert result.returncode != 0 and "FAILED" in result.stdout + result.stderr
