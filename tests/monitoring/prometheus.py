"""A real Prometheus (Debian's 2.42 package: ``prometheus`` and ``promtool``) for the monitoring tests.

``binary`` finds a binary, installing the package with ``scripts/ensure-prometheus`` when it is
missing (a test fails, never skips, when that cannot be done); ``chart_rules`` writes the chart's
PrometheusRule as a Prometheus rule file; ``Server`` runs a Prometheus of the test's own (its
config, a data directory in a temporary directory, a port the kernel picks; never the system service the
package may have started) and queries its HTTP API.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
import time
from typing import Any

import httpx
import pytest
import yaml

from tests.chart.rendering import CHART, only, render
from tests.e2e.harness import Proc, wait_until

ROOT = pathlib.Path(__file__).resolve().parents[2]
MONITORING_VALUES = ("--values", str(CHART / "ci" / "monitoring-values.yaml"))
"""The chart scenario with every monitoring part on (alert thresholds and labels of its own)."""


def binary(name: str) -> str:
    """The path of ``prometheus`` or ``promtool``, installed with apt-get if missing."""
    found = shutil.which(name)
    if found is None:
        result = subprocess.run([str(ROOT / "scripts" / "ensure-prometheus")], capture_output=True, text=True,
                                timeout=600, check=False)
        found = shutil.which(name)
        if found is None:
            pytest.fail(f"{name} is not installed and scripts/ensure-prometheus could not install it "
                        f"({result.stderr.strip()}); run as root: apt-get update && apt-get install prometheus")
    return found


def rendered(*args: str) -> list[dict[str, Any]]:
    """The objects of the chart with every monitoring part on (``args``: more helm arguments)."""
    return render(*MONITORING_VALUES, *args)


def chart_rules(path: pathlib.Path, *args: str) -> pathlib.Path:
    """Write the rendered PrometheusRule's groups as a Prometheus rule file at ``path``."""
    rule = only(rendered(*args), "PrometheusRule")
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


class Server:
    """A Prometheus process of the test's own, scraping what ``write_targets`` names.

    Each scrape job reads its targets from a file (``file_sd_configs``) that Prometheus watches,
    so a process started later (a worker) is scraped as soon as the test names it.
    """

    def __init__(self, workdir: pathlib.Path, jobs: list[dict[str, Any]], *, rule_files: list[pathlib.Path],
                 scrape_interval: str = "1s") -> None:
        self.workdir = workdir
        self.url = ""
        """``http://127.0.0.1:<port>``, known once it listens (on a port the kernel picks: no race)."""
        config = {
            "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval,
                       "scrape_timeout": scrape_interval},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {**job, "file_sd_configs": [{"files": [str(self._targets_file(job["job_name"]))]}]}
                for job in jobs
            ],
        }
        for job in jobs:
            self.write_targets(job["job_name"], [])
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config, sort_keys=False))
        self.proc = Proc("prometheus", [
            binary("prometheus"), f"--config.file={self.config}", f"--storage.tsdb.path={workdir / 'data'}",
            "--web.listen-address=127.0.0.1:0", "--log.level=info",
        ], {}, workdir)

    def _targets_file(self, job: str) -> pathlib.Path:
        return self.workdir / f"targets-{job.replace('/', '_')}.json"

    def write_targets(self, job: str, targets: list[tuple[str, dict[str, str]]]) -> None:
        """The targets of ``job``: ``(host:port, target labels)`` each (written atomically)."""
        body = [{"targets": [address], "labels": labels} for address, labels in targets]
        tmp = self._targets_file(job).with_suffix(".tmp")
        tmp.write_text(json.dumps(body))
        tmp.replace(self._targets_file(job))

    def start(self) -> Server:
        self.proc.start()

        def ready() -> bool:
            if not self.proc.alive():
                raise AssertionError(f"prometheus exited:\n{self.proc.output()}")
            if not self.url:
                listening = re.search(r'msg="Listening on" address=(127\.0\.0\.1:\d+)', self.proc.output())
                if listening is None:
                    return False
                self.url = f"http://{listening.group(1)}"
            try:
                return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 30, "Prometheus to be ready", interval=0.1)
        return self

    def stop(self) -> None:
        self.proc.stop()

    def api(self, path: str, **params: Any) -> Any:
        """``data`` of a Prometheus HTTP API answer; an error answer fails the test with its message."""
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar, as one sample) ``promql`` evaluates to now."""
        data = self.api("query", query=promql)
        if data["resultType"] == "vector":
            return list(data["result"])
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return [{"metric": s["metric"], "value": s["values"][-1]} for s in data["result"]]

    def value(self, promql: str) -> float | None:
        """The one value ``promql`` evaluates to, None when it is empty."""
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def targets_up(self, job: str, count: int) -> bool:
        active = [t for t in self.api("targets", state="active")["activeTargets"] if t["scrapePool"] == job]
        return len(active) == count and all(t["health"] == "up" for t in active)


def wait_value(server: Server, promql: str, expected: float, timeout: float) -> float:
    """Seconds until ``promql`` evaluates to ``expected`` (fails after ``timeout``)."""
    start = time.monotonic()
    wait_until(lambda: server.value(promql) == expected, timeout, f"{promql} == {expected}", interval=0.05)
    return time.monotonic() - start
