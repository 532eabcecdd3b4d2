"""Creating and reading objects: identity, names, namespaces and the errors of kube-apiserver."""

from __future__ import annotations

import re
import uuid

import httpx

from tests.emulator.conftest import WIDGETS, widget


def test_create_assigns_uid_timestamp_generation_and_answers_201(api: httpx.Client) -> None:
    """POST creates the object with 201 Created and a server-set uid (UUID), creationTimestamp,
    generation 1 and resourceVersion; client-set system metadata is ignored."""
    body = widget("w1", size=2)
    body["metadata"].update({"uid": "forged", "generation": 7, "resourceVersion": "999",
                             "creationTimestamp": "2000-01-01T00:00:00Z"})
    response = api.post(WIDGETS, json=body)
    assert response.status_code == 201
    meta = response.json()["metadata"]
    assert uuid.UUID(meta["uid"]).version == 4
    assert meta["generation"] == 1
    assert meta["namespace"] == "default"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", meta["creationTimestamp"])
    assert meta["creationTimestamp"] != "2000-01-01T00:00:00Z"
    assert meta["resourceVersion"] != "999"
    fetched = api.get(f"{WIDGETS}/w1").json()
    assert fetched["metadata"] == meta
    assert fetched["apiVersion"] == "example.com/v1" and fetched["kind"] == "Widget"


def test_generate_name_appends_five_random_characters(api: httpx.Client) -> None:
    """metadata.generateName makes the name: the prefix plus 5 characters of k8s' alphabet."""
    names = set()
    for _ in range(3):
        response = api.post(WIDGETS, json={"apiVersion": "example.com/v1", "kind": "Widget",
                                           "metadata": {"generateName": "run-"}, "spec": {}})
        assert response.status_code == 201
        names.add(response.json()["metadata"]["name"])
    assert len(names) == 3
    assert all(re.fullmatch(r"run-[bcdfghjklmnpqrstvwxz2456789]{5}", name) for name in names)


def test_duplicate_name_is_409_already_exists(api: httpx.Client) -> None:
    """Creating a second object with a taken name is refused: 409, reason AlreadyExists."""
    assert api.post(WIDGETS, json=widget("dup")).status_code == 201
    response = api.post(WIDGETS, json=widget("dup"))
    assert response.status_code == 409
    status = response.json()
    assert status["kind"] == "Status" and status["reason"] == "AlreadyExists"
    assert status["message"] == 'widgets.example.com "dup" already exists'
    assert status["details"] == {"name": "dup", "group": "example.com", "kind": "widgets"}


def test_missing_name_and_invalid_name_are_422(api: httpx.Client) -> None:
    """Without name or generateName, or with a name that is no RFC 1123 subdomain: 422 Invalid."""
    response = api.post(WIDGETS, json={"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {}})
    assert response.status_code == 422
    assert response.json()["details"]["causes"][0]["field"] == "metadata.name"
    response = api.post(WIDGETS, json=widget("Not_Valid"))
    assert response.status_code == 422
    assert "RFC 1123" in response.json()["message"]


def test_create_in_a_missing_namespace_is_404(api: httpx.Client) -> None:
    """Objects can only be created in existing namespaces: 404 'namespaces "x" not found'."""
    response = api.post("/apis/example.com/v1/namespaces/nowhere/widgets", json=widget("w"))
    assert response.status_code == 404
    assert response.json()["message"] == 'namespaces "nowhere" not found'


def test_namespace_mismatch_and_kind_mismatch_are_400(api: httpx.Client) -> None:
    """The body's namespace and kind must agree with the URL, else 400 BadRequest."""
    body = widget("w")
    body["metadata"]["namespace"] = "kube-system"
    assert api.post(WIDGETS, json=body).status_code == 400
    body = widget("w")
    body["kind"] = "Gadget"
    assert api.post(WIDGETS, json=body).status_code == 400


def test_get_of_a_missing_object_and_of_an_unknown_resource_are_404(api: httpx.Client) -> None:
    """A missing object is 404 NotFound naming it; an unserved resource is 404 too. The Status
    comes as exactly 'application/json' (lightkube maps errors to ApiError only then)."""
    response = api.get(f"{WIDGETS}/ghost")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
    assert response.json()["reason"] == "NotFound"
    assert response.json()["message"] == 'widgets.example.com "ghost" not found'
    assert api.get("/apis/example.com/v1/namespaces/default/sprockets").status_code == 404
    assert api.get("/apis/example.com/v9/namespaces/default/widgets").status_code == 404


def test_initial_namespaces_exist(api: httpx.Client) -> None:
    """A fresh cluster has the default and kube-system namespaces, Active."""
    names = {ns["metadata"]["name"]: ns for ns in api.get("/api/v1/namespaces").json()["items"]}
    assert {"default", "kube-system"} <= set(names)
    assert names["default"]["status"]["phase"] == "Active"


def test_cluster_scoped_objects_have_no_namespace(api: httpx.Client) -> None:
    """Cluster-scoped resources are created without a namespace and are not served under one."""
    response = api.post("/apis/example.com/v1/gadgets", json={
        "apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g", "namespace": "default"}})
    assert response.status_code == 201
    assert "namespace" not in response.json()["metadata"]
    assert api.get("/apis/example.com/v1/namespaces/default/gadgets/g").status_code == 404


def test_builtin_resources_are_served(api: httpx.Client) -> None:
    """Pods, ConfigMaps, Secrets, Services, ServiceAccounts, Deployments, Leases, HPAs and both
    Event APIs can be created and read back."""
    cases = [
        ("/api/v1/namespaces/default/pods", "v1", "Pod"),
        ("/api/v1/namespaces/default/configmaps", "v1", "ConfigMap"),
        ("/api/v1/namespaces/default/secrets", "v1", "Secret"),
        ("/api/v1/namespaces/default/services", "v1", "Service"),
        ("/api/v1/namespaces/default/serviceaccounts", "v1", "ServiceAccount"),
        ("/apis/apps/v1/namespaces/default/deployments", "apps/v1", "Deployment"),
        ("/apis/coordination.k8s.io/v1/namespaces/default/leases", "coordination.k8s.io/v1", "Lease"),
        ("/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers", "autoscaling/v2",
         "HorizontalPodAutoscaler"),
        ("/apis/kopf.dev/v1/namespaces/default/kopfpeerings", "kopf.dev/v1", "KopfPeering"),
        ("/apis/kopf.dev/v1/clusterkopfpeerings", "kopf.dev/v1", "ClusterKopfPeering"),
    ]
    for path, api_version, kind in cases:
        response = api.post(path, json={"apiVersion": api_version, "kind": kind, "metadata": {"name": "x"}})
        assert response.status_code == 201, (path, response.text)
        assert api.get(f"{path}/x").json()["kind"] == kind



def test_secret_string_data_is_stored_as_base64_data(api: httpx.Client) -> None:
    """A Secret written with stringData is stored with those keys base64-encoded in data, and
    stringData itself is never returned: the API server treats it as write-only input."""
    import base64

    created = api.post("/api/v1/namespaces/default/secrets", json={
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
        "data": {"a": base64.b64encode(b"kept").decode()}, "stringData": {"b": "hello"}})
    assert created.status_code == 201
    stored = api.get("/api/v1/namespaces/default/secrets/s").json()
    assert "stringData" not in stored
    assert {k: base64.b64decode(v).decode() for k, v in stored["data"].items()} == {"a": "kept", "b": "hello"}
