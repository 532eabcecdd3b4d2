"""Deletion: finalizers, garbage collection by ownerReferences, namespaces and CRDs."""

from __future__ import annotations

import httpx
from agentrun_local import emulator

from tests.emulator.conftest import WIDGETS, json_patch, merge_patch, watch, widget

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


def test_delete_without_finalizers_removes_at_once(api: httpx.Client) -> None:
    """DELETE of an object without finalizers removes it (200 with the last state); then 404."""
    api.post(WIDGETS, json=widget("w"))
    response = api.delete(f"{WIDGETS}/w")
    assert response.status_code == 200 and response.json()["metadata"]["name"] == "w"
    assert api.get(f"{WIDGETS}/w").status_code == 404
    assert api.delete(f"{WIDGETS}/w").status_code == 404


def test_finalizers_hold_the_object_until_removed(api: httpx.Client) -> None:
    """With finalizers, DELETE only sets deletionTimestamp (a MODIFIED event, generation+1); the
    object goes (DELETED event, newer resourceVersion) when the last finalizer is removed; no new
    finalizer may be added meanwhile."""
    body = widget("w")
    body["metadata"]["finalizers"] = ["example.com/a", "example.com/b"]
    created = api.post(WIDGETS, json=body).json()
    since = created["metadata"]["resourceVersion"]

    def finish() -> None:
        marked = api.delete(f"{WIDGETS}/w").json()
        assert marked["metadata"]["deletionTimestamp"] and marked["metadata"]["generation"] == 2
        assert api.get(f"{WIDGETS}/w").status_code == 200
        refused = merge_patch(api, f"{WIDGETS}/w", {"metadata": {"finalizers": ["example.com/a", "example.com/c"]}})
        assert refused.status_code == 422
        merge_patch(api, f"{WIDGETS}/w", {"metadata": {"finalizers": ["example.com/b"]}})
        json_patch(api, f"{WIDGETS}/w", [{"op": "remove", "path": "/metadata/finalizers"}])

    events = watch(api, WIDGETS, {"resourceVersion": since}, 3, during=finish)
    assert [e["type"] for e in events] == ["MODIFIED", "MODIFIED", "DELETED"]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions) and len(set(versions)) == 3
    assert "finalizers" not in events[-1]["object"]["metadata"]
    assert api.get(f"{WIDGETS}/w").status_code == 404


def test_owner_deletion_garbage_collects_dependents(api: httpx.Client) -> None:
    """Background propagation: dependents whose ownerReferences point only to deleted owners
    are deleted too; with propagationPolicy=Orphan they stay, without the reference."""
    owner = api.post(WIDGETS, json=widget("owner")).json()
    reference = {"apiVersion": "example.com/v1", "kind": "Widget", "name": "owner", "uid": owner["metadata"]["uid"]}
    api.post(CONFIGMAPS, json={"metadata": {"name": "child", "ownerReferences": [reference]}})
    api.post(CONFIGMAPS, json={"metadata": {"name": "grandchild", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "child",
         "uid": api.get(f"{CONFIGMAPS}/child").json()["metadata"]["uid"]}]}})
    api.delete(f"{WIDGETS}/owner")
    assert api.get(f"{CONFIGMAPS}/child").status_code == 404
    assert api.get(f"{CONFIGMAPS}/grandchild").status_code == 404

    owner = api.post(WIDGETS, json=widget("owner2")).json()
    reference = {"apiVersion": "example.com/v1", "kind": "Widget", "name": "owner2", "uid": owner["metadata"]["uid"]}
    api.post(CONFIGMAPS, json={"metadata": {"name": "orphan", "ownerReferences": [reference]}})
    api.request("DELETE", f"{WIDGETS}/owner2", json={"propagationPolicy": "Orphan"})
    orphan = api.get(f"{CONFIGMAPS}/orphan")
    assert orphan.status_code == 200 and "ownerReferences" not in orphan.json()["metadata"]


def test_deleting_a_namespace_deletes_its_contents(api: httpx.Client) -> None:
    """A deleted namespace is Terminating while objects (held by finalizers) remain in it; new
    objects are forbidden there (403); it disappears once empty."""
    api.post("/api/v1/namespaces", json={"metadata": {"name": "tmp"}})
    api.post("/api/v1/namespaces/tmp/configmaps", json={"metadata": {"name": "c"}})
    api.post("/apis/example.com/v1/namespaces/tmp/widgets",
             json={**widget("held"), "metadata": {"name": "held", "finalizers": ["example.com/x"]}})
    api.delete("/api/v1/namespaces/tmp")
    namespace = api.get("/api/v1/namespaces/tmp").json()
    assert namespace["status"]["phase"] == "Terminating"
    assert api.get("/api/v1/namespaces/tmp/configmaps/c").status_code == 404
    assert api.post("/api/v1/namespaces/tmp/configmaps", json={"metadata": {"name": "d"}}).status_code == 403
    merge_patch(api, "/apis/example.com/v1/namespaces/tmp/widgets/held", {"metadata": {"finalizers": None}})
    assert api.get("/api/v1/namespaces/tmp").status_code == 404


def test_deleting_a_crd_deletes_its_objects_and_unserves_the_resource(api: httpx.Client) -> None:
    """Deleting a CRD deletes all its custom resources, then the CRD, then the resource is no
    longer served or discovered."""
    api.post(WIDGETS, json=widget("w"))
    assert api.delete("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com").status_code == 200
    assert api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.com").status_code == 404
    assert api.get(WIDGETS).status_code == 404
    names = [r["name"] for r in api.get("/apis/example.com/v1").json()["resources"]]
    assert "widgets" not in names and "gadgets" in names


def test_delete_preconditions_are_checked(api: httpx.Client) -> None:
    """DeleteOptions.preconditions (uid, resourceVersion) must match, else 409 Conflict."""
    api.post(WIDGETS, json=widget("w"))
    response = api.request("DELETE", f"{WIDGETS}/w", json={"preconditions": {"uid": "not-it"}})
    assert response.status_code == 409
    assert api.get(f"{WIDGETS}/w").status_code == 200


def test_delete_collection_by_label(api: httpx.Client) -> None:
    """DELETE on a collection deletes the objects matching the label selector."""
    for name, team in (("a", "x"), ("b", "x"), ("c", "y")):
        api.post(CONFIGMAPS, json={"metadata": {"name": name, "labels": {"team": team}}})
    response = api.delete(CONFIGMAPS, params={"labelSelector": "team=x"})
    assert response.status_code == 200
    assert sorted(i["metadata"]["name"] for i in response.json()["items"]) == ["a", "b"]
    assert [i["metadata"]["name"] for i in api.get(CONFIGMAPS).json()["items"]] == ["c"]


def test_server_helpers_see_the_same_objects(server: emulator.EmulatorServer, api: httpx.Client) -> None:
    """The thread-safe helpers read the live state (for assertions in tests and agentrun dev)."""
    api.post(WIDGETS, json=widget("w", size=3))
    assert server.get("example.com/v1", "widgets", "default", "w")["spec"] == {"size": 3}  # type: ignore[index]
    assert server.get("example.com/v1", "widgets", "default", "nope") is None
    assert [o["metadata"]["name"] for o in server.list("example.com/v1", "widgets")] == ["w"]
    created = server.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "made"}})
    assert api.get(f"{CONFIGMAPS}/made").json()["metadata"]["uid"] == created["metadata"]["uid"]
