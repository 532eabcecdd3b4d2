"""The request log in RBAC terms, the threaded runner, its kubeconfig, and kmock's own DSL."""

from __future__ import annotations

import threading

import httpx
import kmock
import pytest
import yaml
from agentrun_local import emulator

from tests.emulator.conftest import WIDGETS, merge_patch, watch, widget, widget_crd


def test_every_request_is_audited_with_its_rbac_verb(server: emulator.EmulatorServer, api: httpx.Client) -> None:
    """Each request is recorded as an RBAC verb on group/resource/subresource in a namespace,
    with the client's User-Agent; non-resource URLs are recorded by path."""
    server.emulator.audit.clear()
    api.get("/apis")
    api.post(WIDGETS, json=widget("w"))
    api.get(f"{WIDGETS}/w")
    api.get(WIDGETS)
    watch(api, WIDGETS, {"resourceVersion": "1"}, 0, timeout=1)
    merge_patch(api, f"{WIDGETS}/w/status", {"status": {"phase": "Running"}})
    current = api.get(f"{WIDGETS}/w").json()
    api.put(f"{WIDGETS}/w", json=current)
    api.delete(f"{WIDGETS}/w")
    api.delete("/api/v1/namespaces/default/configmaps")
    records = server.call(lambda: list(server.emulator.audit))
    seen = [(r.verb, r.group, r.rbac_resource, r.namespace, r.name) for r in records if not r.path]
    assert seen == [
        ("create", "example.com", "widgets", "default", None),
        ("get", "example.com", "widgets", "default", "w"),
        ("list", "example.com", "widgets", "default", None),
        ("watch", "example.com", "widgets", "default", None),
        ("patch", "example.com", "widgets/status", "default", "w"),
        ("get", "example.com", "widgets", "default", "w"),
        ("update", "example.com", "widgets", "default", "w"),
        ("delete", "example.com", "widgets", "default", "w"),
        ("deletecollection", "", "configmaps", "default", None),
    ]
    assert records[0].path == "/apis" and records[0].verb == "get"
    assert {r.user_agent for r in records} == {"emulator-tests/1.0"}
    assert [r.code for r in records if not r.path][:3] == [201, 200, 200]


def test_history_limit_bounds_the_logs() -> None:
    """With history_limit (agentrun dev), the audit and kmock's request log stay bounded."""
    with emulator.EmulatorServer(history_limit=5) as server, httpx.Client(base_url=server.url) as api:
        for _ in range(20):
            api.get("/api/v1/namespaces")
        assert server.call(lambda: (len(server.emulator.audit), len(server.emulator._requests))) == (5, 5)


def test_kubeconfig_points_at_the_server(server: emulator.EmulatorServer, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The kubeconfig has one cluster (the server URL), one user without credentials and one
    context with namespace default, current."""
    path = server.write_kubeconfig(tmp_path / "sub" / "kubeconfig")
    config = yaml.safe_load(path.read_text())
    assert config["current-context"] == "agentrun-emulator"
    assert config["clusters"][0]["cluster"]["server"] == server.url
    assert config["contexts"][0]["context"]["namespace"] == "default"
    assert config["users"][0]["user"] == {}


def test_servers_start_and_stop_in_any_order() -> None:
    """Several servers can run at once (different ports) and stop in any order; stop is idempotent."""
    first, second = emulator.EmulatorServer(), emulator.EmulatorServer()
    first.start()
    second.start()
    assert first.url != second.url
    first.stop()
    assert httpx.get(f"{second.url}/version").status_code == 200
    second.stop()
    second.stop()


def test_a_busy_port_fails_start_loudly(server: emulator.EmulatorServer) -> None:
    """Starting on a port in use raises at start() instead of failing later."""
    port = int(server.url.rsplit(":", 1)[1])
    with pytest.raises(RuntimeError, match="could not listen"):
        emulator.EmulatorServer(port=port).start()


def test_helpers_are_thread_safe(server: emulator.EmulatorServer, api: httpx.Client) -> None:
    """get/list/create can be called from several threads while the server serves requests."""
    def create(index: int) -> None:
        server.create({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": f"t{index}"}})
        api.post(WIDGETS, json=widget(f"h{index}"))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(server.list("example.com/v1", "widgets", "default")) == 16
    versions = [int(o["metadata"]["resourceVersion"]) for o in server.list("example.com/v1", "widgets")]
    assert len(set(versions)) == 16


def test_kmock_reactions_take_precedence_for_fault_injection(server: emulator.EmulatorServer,
                                                             api: httpx.Client) -> None:
    """kmock's DSL still works on the emulator: a reaction added by a test answers matching
    requests (here: one 503 for a status patch), everything else is emulated; kmock's objects
    view mirrors the stored objects."""
    api.post(WIDGETS, json=widget("w"))
    server.call(lambda: server.emulator[kmock.method.PATCH, kmock.subresource("status")][:1] << 503)
    assert merge_patch(api, f"{WIDGETS}/w/status", {"status": {"phase": "A"}}).status_code == 503
    assert merge_patch(api, f"{WIDGETS}/w/status", {"status": {"phase": "B"}}).status_code == 200
    mirrored = server.call(lambda: dict(server.emulator.objects["example.com/v1/widgets", "default", "w"]))
    assert mirrored["status"] == {"phase": "B"}


def test_crds_passed_to_the_constructor_are_objects_too() -> None:
    """CRDs given at start are stored CustomResourceDefinitions (kubectl get crd lists them)."""
    with emulator.EmulatorServer(crds=[widget_crd()]) as server:
        crds = server.list("apiextensions.k8s.io/v1", "customresourcedefinitions")
        assert [c["metadata"]["name"] for c in crds] == ["widgets.example.com"]
