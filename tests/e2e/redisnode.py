"""A private ``redis-server`` for tests that restart Redis (the shared one must never restart)."""

from __future__ import annotations

import pathlib
import subprocess

import pytest
import redis

from tests.e2e import harness


class RedisServer:
    """A private redis-server with no persistence: a restart starts it empty."""

    def __init__(self, log_dir: pathlib.Path) -> None:
        self.port = harness.free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_dir / f"redis-{self.port}.log", "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no"],
                stdout=log, stderr=subprocess.STDOUT,
            )
        except FileNotFoundError:
            pytest.fail("redis-server is not installed: apt-get install redis-server")

        def up() -> bool:
            try:
                return bool(redis.Redis.from_url(self.url, socket_timeout=1).ping())
            except redis.RedisError:
                return False

        harness.wait_until(up, 20, f"redis-server on port {self.port}", interval=0.05)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
