"""The worker's metrics plumbing without a worker: brokers without Dramatiq's own exporter, one
multiprocess directory per ``dramatiq`` command, stale directories removed.

The served series are checked end to end in ``tests/e2e/test_worker_metrics.py``.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import pytest
from agentrun_worker import metrics

from agentrun import broker, settings


def test_no_broker_carries_dramatiq_s_own_exporter_whatever_the_version() -> None:
    # Given the stub broker agentrun builds (the RabbitMQ one takes the same list)
    built = broker.make_broker(settings.Settings(broker_url=""))
    # Then it has Dramatiq's default middleware but its Prometheus exporter
    names = [type(m).__name__ for m in built.middleware]
    assert "Prometheus" not in names
    assert {"AgeLimit", "TimeLimit", "Retries", "AsyncIO"} <= set(names)


def test_a_process_key_names_one_process_for_ever() -> None:
    key = metrics._process_key(os.getpid())
    pid, start = key.split("-")
    assert pid == str(os.getpid()) and start.isdigit() and start != "0"
    assert metrics._process_key(os.getpid()) == key
    assert metrics.directory().name == metrics._process_key(os.getppid())


def test_directories_of_commands_that_are_gone_are_removed(monkeypatch: pytest.MonkeyPatch,
                                                           tmp_path: pathlib.Path) -> None:
    # Given the directory of a live command, of one that is gone, and of a pid reused since
    monkeypatch.setattr(metrics, "BASE", tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone_key = metrics._process_key(gone.pid)
    gone.wait()
    live = tmp_path / metrics._process_key(os.getpid())
    reused = tmp_path / f"{os.getpid()}-1"  # this pid, another start time: an earlier process
    for path in (live, tmp_path / gone_key, reused, tmp_path / "not-ours"):
        path.mkdir()
        (path / "counter_1.db").write_bytes(b"")
    # When a worker process boots and cleans up
    metrics._remove_stale()
    # Then only the live command's directory (and what is not a command's) is left
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, "not-ours"])


def test_hooks_record_nothing_where_no_worker_process_booted() -> None:
    # agentrun dev runs the worker in its own process: no process boot, nothing recorded
    assert metrics._series is None
    metrics.run_started("q")
    with metrics.in_flight("q"):
        metrics.run_finished("q", "Succeeded", "Completed")
