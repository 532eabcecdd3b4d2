"""The packages type-check under mypy --strict (the configuration in pyproject.toml)."""

from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_packages_pass_mypy_strict() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "agentrun", "operator/agentrun_operator", "worker/agentrun_worker",
         "gateway/agentrun_gateway", "local/agentrun_local"],
        cwd=ROOT, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
