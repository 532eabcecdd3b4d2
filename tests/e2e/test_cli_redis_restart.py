"""``agentrun logs -f`` rides out a short Redis restart.

A private ``redis-server`` (no persistence: a restart starts it empty) is killed while
``agentrun logs -f`` (a real subprocess) follows a run, and started again 4.5 s later, as in
issue 17. A writer thread plays the worker: it streams words, waits for Redis while it is
down, goes on after the restart and ends the run. The CLI must reconnect with backoff, resume
after the last event it printed, say on a line of its own (stderr) that it lost the
connection and what it missed, and end with the run's final status and exit code 0.

Its own API emulator and Redis: nothing shared is restarted, so it runs beside any other test.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import threading
import time
import uuid

import lightkube
import lightkube.codecs
import lightkube.types
import pytest
import redis

from agentrun import keys, kube, streams
from tests.e2e import harness
from tests.e2e.emulated import api  # noqa: F401  (fixture)
from tests.e2e.redisnode import RedisServer

pytestmark = pytest.mark.e2e
BIN = pathlib.Path(sys.executable).parent


class Writer(threading.Thread):
    """Appends the run's events like a worker: one word every 40 ms, waiting out an outage."""

    def __init__(self, url: str, uid: str) -> None:
        super().__init__(daemon=True)
        self.url, self.key = url, keys.stream(uid)
        self.go_on = threading.Event()
        self.written = 0

    def add(self, event: dict[str, object]) -> None:
        while True:
            try:
                redis.Redis.from_url(self.url, socket_timeout=1).xadd(self.key, {streams.FIELD: streams.encode(event)})
                return
            except redis.RedisError:
                time.sleep(0.1)

    def run(self) -> None:
        self.add({"type": streams.STATUS, "status": "running", "attempt": 1})
        for i in range(60):
            if i == 30:
                self.go_on.wait(60)  # the second half after the restart
            self.add({"type": streams.ASSISTANT, "delta": f"w{i} "})
            self.written = i + 1
            time.sleep(0.04)
        self.add({"type": streams.STATUS, "status": "succeeded", "reason": "Completed", "iterations": 1})


def test_logs_follow_reconnects_after_a_redis_restart(api: tuple[lightkube.Client, pathlib.Path],  # noqa: F811
                                                      tmp_path: pathlib.Path) -> None:
    client, kubeconfig = api
    server = RedisServer(tmp_path)
    server.start()
    try:
        # Given a running run whose stream a worker is writing
        namespace, name = f"logs-{uuid.uuid4().hex[:8]}", "follow-me"
        client.create(lightkube.codecs.from_dict({"apiVersion": "v1", "kind": "Namespace",
                                                  "metadata": {"name": namespace}}))
        run = kube.to_dict(client.create(lightkube.codecs.from_dict({
            "apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"input": "hi", "agent": {"model": "scripted"}}})))

        def set_phase(phase: str) -> None:
            client.patch(kube.AgentRun.Status, name, {"status": {"phase": phase}}, namespace=namespace,
                         patch_type=lightkube.types.PatchType.MERGE)

        set_phase("Running")
        writer = Writer(server.url, run["metadata"]["uid"])
        writer.start()
        output = tmp_path / "logs.out"
        with open(output, "wb") as sink:
            env = {**os.environ, "KUBECONFIG": str(kubeconfig),
                   "AGENTRUN_REDIS_URL": server.url, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}
            # stdout and stderr into one file, so the notice's place among the streamed text shows
            cli = subprocess.Popen([str(BIN / "agentrun"), "logs", name, "-n", namespace, "-f"], env=env,
                                   stdout=sink, stderr=subprocess.STDOUT)
            try:
                # When Redis dies mid-stream and comes back empty 4.5 s later
                harness.wait_until(lambda: "w10 " in output.read_text(), 30, "the CLI to print w10")
                server.kill()
                time.sleep(4.5)
                server.start()
                writer.go_on.set()
                writer.join(60)
                set_phase("Succeeded")
                code = cli.wait(60)
            finally:
                if cli.poll() is None:
                    cli.kill()
        text = output.read_text()
        # Then the CLI carried on and ended with the run's status
        assert code == 0, text
        assert "w59 " in text and "Succeeded reason=Completed" in text, text
        # And it said, each on a line of its own, that it lost Redis, from where, and what it missed
        lines = text.splitlines()
        lost = [line for line in lines if "lost the connection to Redis" in line]
        back = [line for line in lines if "reconnected to Redis" in line]
        assert len(lost) == 1 and lost[0].startswith("agentrun: lost the connection"), text
        assert len(back) == 1 and back[0].startswith("agentrun: reconnected"), text
        assert "--since-id" in lost[0] or "after event" in lost[0], lost[0]
        assert "are lost" in back[0] or "nothing was missed" in back[0], back[0]
        # And nothing after the restart is missing or repeated
        after = [w for w in text.split() if w.startswith("w") and w[1:].isdigit() and int(w[1:]) >= 30]
        assert after == [f"w{i}" for i in range(30, 60)], text
    finally:
        server.kill()
