"""A private RabbitMQ node for tests that stop the broker or change its settings.

Stopping the machine's shared broker, or lowering its ``consumer_timeout``, would disturb
every other test. These tests start their own node instead: the same ``rabbitmq-server``
binary, its own node name, ports and data directory, with the management plugin on so
the management API can be checked too. It starts in about ten seconds.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from urllib.parse import quote


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RabbitNode:
    """One RabbitMQ node of the test's own; :meth:`close` stops it and removes its data."""

    def __init__(self) -> None:
        if shutil.which("rabbitmq-server") is None or shutil.which("rabbitmqctl") is None:
            raise RuntimeError("rabbitmq-server and rabbitmqctl must be installed "
                               "(Debian: apt-get install rabbitmq-server)")
        self.name = f"agentrun-{uuid.uuid4().hex[:8]}@localhost"
        self.port = _free_port()
        self.management_port = _free_port()
        self.dist_port = _free_port()
        self.home = pathlib.Path(tempfile.mkdtemp(prefix="agentrun-rabbit-"))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def amqp_url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/%2F"

    @property
    def management_url(self) -> str:
        return f"http://guest:guest@127.0.0.1:{self.management_port}"

    def queue_url(self, queue: str) -> str:
        return f"{self.management_url}/api/queues/%2F/{quote(queue, safe='')}"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.home / "mnesia"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(self.home / "feature_flags"),
            "RABBITMQ_LOG_BASE": str(self.home / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.home / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.home / "rabbitmq.conf"),
            "RABBITMQ_PID_FILE": str(self.home / "pid"),
        }

    def start(self, timeout: float = 90) -> RabbitNode:
        (self.home / "mnesia").mkdir()
        (self.home / "log").mkdir()
        (self.home / "enabled_plugins").write_text("[rabbitmq_management].\n")
        (self.home / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = {self.port}\n"
            f"management.tcp.port = {self.management_port}\n"
            "management.tcp.ip = 127.0.0.1\n"
        )
        # rabbitmq-server drops to the rabbitmq user when started as root.
        if os.geteuid() == 0:
            subprocess.run(["chown", "-R", "rabbitmq", str(self.home)], check=True)
        self.process = subprocess.Popen(["rabbitmq-server"], env=self._env(), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"rabbitmq-server {self.name} exited with {self.process.returncode}; "
                                   f"logs in {self.home / 'log'}")
            if self.ctl("await_startup", "--timeout", "5", check=False).returncode == 0:
                return self
            time.sleep(0.5)
        raise RuntimeError(f"rabbitmq-server {self.name} did not start within {timeout} s")

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["rabbitmqctl", "-n", self.name, *args], capture_output=True, text=True,
                              check=check, env=self._env())

    def stop_app(self) -> None:
        """Stop the broker inside the node: connections drop, durable queues and persistent messages stay."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        self.ctl("start_app")
        self.ctl("await_startup", "--timeout", "60")

    def set_consumer_timeout(self, milliseconds: int, *, check_every_ms: int | None = None) -> None:
        """Change the delivery acknowledgement timeout at runtime, for channels opened afterwards.

        ``check_every_ms``: how often those channels check it (``channel_tick_interval``, a
        minute by default; RabbitMQ's own consumer-timeout tests lower it the same way).
        """
        self.ctl("eval", f"application:set_env(rabbit, consumer_timeout, {int(milliseconds)}).")
        if check_every_ms is not None:
            self.ctl("eval", f"application:set_env(rabbit, channel_tick_interval, {int(check_every_ms)}).")

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.ctl("stop", check=False)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()
        shutil.rmtree(self.home, ignore_errors=True)
