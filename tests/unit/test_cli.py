"""The command line's own behaviour: migrations, and errors that say what to do."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

BIN = pathlib.Path(sys.executable).parent


def run(*args: str, env: dict[str, str], cwd: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "agentrun"), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=60)


def clean_env(tmp_path: pathlib.Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTRUN_") and k != "KUBECONFIG"}
    env["AGENTRUN_STATE_DIR"] = str(tmp_path / "state")
    return env


def test_migrate_applies_once_then_reports_nothing_pending(tmp_path: pathlib.Path, postgres_dsn: str) -> None:
    env = clean_env(tmp_path)
    first = run("migrate", env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "applied 2 migration(s): 0001_init, 0002_rest_functions" in first.stdout
    assert (tmp_path / "state" / "agentrun.db").exists()
    second = run("migrate", env=env, cwd=tmp_path)
    assert "applied 0 migration(s): none pending" in second.stdout
    on_postgres = run("migrate", "--database-url", postgres_dsn, env=env, cwd=tmp_path)
    assert on_postgres.returncode == 0, on_postgres.stderr
    assert "migration(s)" in on_postgres.stdout


def test_logs_without_redis_says_how_to_get_it(tmp_path: pathlib.Path) -> None:
    result = run("logs", "hello", env=clean_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 2
    assert "AGENTRUN_REDIS_URL is not set" in result.stderr
    assert "agentrun dev" in result.stderr


def test_logs_of_a_missing_run_names_it(tmp_path: pathlib.Path, redis_url: str) -> None:
    from agentrun_local import emulator

    with emulator.EmulatorServer() as server:
        env = clean_env(tmp_path)
        env.update(AGENTRUN_REDIS_URL=redis_url, KUBECONFIG=str(server.write_kubeconfig(tmp_path / "kubeconfig")))
        result = run("logs", "nope", "-n", "default", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert 'AgentRun "nope" not found in namespace "default"' in result.stderr
    assert "agentrun list -n default" in result.stderr
    assert "Traceback" not in result.stderr
