"""Real kopf (``kopf run`` in a subprocess) operating on the emulator."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
from agentrun_local import emulator

from tests.emulator.conftest import WIDGETS, widget, widget_crd

HANDLERS = '''
import os, pathlib
import kopf

CALLS = pathlib.Path(os.environ["CALLS_FILE"])


@kopf.on.startup()
def configure(settings, **_):
    settings.watching.server_timeout = 2
    settings.watching.client_timeout = 5
    settings.persistence.finalizer = "example.com/kopf-test"


@kopf.on.create("example.com", "v1", "widgets")
def created(body, name, patch, **_):
    with CALLS.open("a") as f:
        f.write(f"create {name}\\n")
    kopf.info(body, reason="Greeted", message=f"hello {name}")
    patch.status["phase"] = "Seen"
    patch.metadata.annotations["example.com/greeted"] = "yes"
    return {"ok": True}


@kopf.on.delete("example.com", "v1", "widgets")
def deleted(name, **_):
    with CALLS.open("a") as f:
        f.write(f"delete {name}\\n")
'''


def wait_for(condition: Callable[[], object], timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_kopf_handles_each_object_once_and_its_patches_succeed(tmp_path: pathlib.Path) -> None:
    """kopf --standalone --all-namespaces lists, then watches from the list's resourceVersion
    (reconnecting every 2 s with the last one it saw): the create handler runs exactly once,
    kopf's status, annotation and finalizer patches (merge and JSON patch with a
    resourceVersion test) succeed, its Event is stored, and deletion runs the delete handler
    and completes when kopf removes its finalizer."""
    calls = tmp_path / "calls.log"
    (tmp_path / "handlers.py").write_text(HANDLERS)
    with emulator.EmulatorServer(crds=[widget_crd()]) as server, httpx.Client(base_url=server.url) as api:
        env = {**os.environ, "KUBECONFIG": str(server.write_kubeconfig(tmp_path / "kubeconfig")),
               "CALLS_FILE": str(calls)}
        log = (tmp_path / "kopf.log").open("w")
        kopf = subprocess.Popen(
            [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces", "--verbose",
             str(tmp_path / "handlers.py")], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path)
        try:
            def watching() -> bool:
                records = server.call(lambda: list(server.emulator.audit))
                return any(r.verb == "watch" and r.resource == "widgets" for r in records)

            wait_for(watching, what="kopf to watch widgets")
            api.post(WIDGETS, json=widget("w", size=1))

            def handled() -> bool:
                obj = server.get("example.com/v1", "widgets", "default", "w") or {}
                return (obj.get("status", {}).get("phase") == "Seen"
                        and "example.com/kopf-test" in obj["metadata"].get("finalizers", []))

            wait_for(handled, what="the create handler's patches")
            obj = server.get("example.com/v1", "widgets", "default", "w")
            assert obj is not None
            assert obj["status"]["created"] == {"ok": True}
            assert obj["metadata"]["annotations"]["example.com/greeted"] == "yes"
            assert "kopf.zalando.org/last-handled-configuration" in obj["metadata"]["annotations"]
            wait_for(lambda: server.list("v1", "events", "default"), what="kopf's event")
            [event] = server.list("v1", "events", "default")
            assert event["reason"] == "Greeted" and event["involvedObject"]["uid"] == obj["metadata"]["uid"]

            time.sleep(3)  # at least one watch timeout and reconnection: still no second call
            assert calls.read_text().splitlines() == ["create w"]
            resumed = [r for r in server.call(lambda: list(server.emulator.audit))
                       if r.verb == "watch" and r.resource == "widgets"]
            assert len(resumed) >= 2

            api.delete(f"{WIDGETS}/w")
            wait_for(lambda: server.get("example.com/v1", "widgets", "default", "w") is None,
                     what="kopf to release the finalizer")
            assert calls.read_text().splitlines() == ["create w", "delete w"]
            assert server.call(lambda: list(server.emulator.errors)) == []
        finally:
            kopf.terminate()
            kopf.wait(15)
            log.close()
    output = (tmp_path / "kopf.log").read_text()
    assert "Traceback" not in output, output
