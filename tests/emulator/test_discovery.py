"""Discovery (/api, /apis, resource lists), CRD registration, /version and /openapi."""

from __future__ import annotations

import httpx
from agentrun_local import emulator
from agentrun_local.emulator import resources

from tests.emulator.conftest import widget_crd

CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def by_name(resource_list: dict) -> dict[str, dict]:  # type: ignore[type-arg]
    return {r["name"]: r for r in resource_list["resources"]}


def test_core_group_version_is_v1(api: httpx.Client) -> None:
    """/api lists version v1 and /api/v1 is an APIResourceList with groupVersion "v1" (not "/v1")."""
    assert api.get("/api").json()["versions"] == ["v1"]
    core = api.get("/api/v1").json()
    assert core["kind"] == "APIResourceList" and core["groupVersion"] == "v1"
    resources_ = by_name(core)
    assert resources_["namespaces"]["namespaced"] is False
    assert resources_["pods"]["namespaced"] is True and resources_["pods"]["shortNames"] == ["po"]
    assert resources_["pods/status"]["verbs"] == ["get", "patch", "update"]
    assert {"configmaps", "secrets", "events", "services", "serviceaccounts"} <= set(resources_)


def test_group_list_and_group_documents(api: httpx.Client) -> None:
    """/apis lists every group with its versions and preferred version; /apis/<group> describes one."""
    groups = {g["name"]: g for g in api.get("/apis").json()["groups"]}
    assert {"apps", "events.k8s.io", "coordination.k8s.io", "autoscaling", "apiextensions.k8s.io",
            "kopf.dev", "example.com"} <= set(groups)
    assert groups["autoscaling"]["preferredVersion"] == {"groupVersion": "autoscaling/v2", "version": "v2"}
    group = api.get("/apis/example.com").json()
    assert group["kind"] == "APIGroup" and group["versions"] == [{"groupVersion": "example.com/v1", "version": "v1"}]
    assert api.get("/apis/nothing.example.org").status_code == 404


def test_crd_resources_are_discoverable_with_names_and_subresources(api: httpx.Client) -> None:
    """A CRD's resource appears in /apis/<group>/<version> with kind, singularName, shortNames,
    categories, verbs, scope and its subresources (widgets/status, widgets/scale)."""
    listed = by_name(api.get("/apis/example.com/v1").json())
    widgets = listed["widgets"]
    assert widgets["kind"] == "Widget" and widgets["singularName"] == "widget"
    assert widgets["shortNames"] == ["wd"] and widgets["categories"] == ["gizmos"]
    assert widgets["namespaced"] is True
    assert set(widgets["verbs"]) == {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}
    assert listed["widgets/status"]["verbs"] == ["get", "patch", "update"]
    assert listed["widgets/scale"]["kind"] == "Scale" and listed["widgets/scale"]["group"] == "autoscaling"
    assert listed["gadgets"]["namespaced"] is False and "gadgets/status" not in listed


def test_creating_a_crd_registers_it_and_reports_it_established() -> None:
    """A CRD created through the API gets status Established=True and acceptedNames (with the
    defaulted singular and listKind), and its resource is served at once."""
    with emulator.EmulatorServer() as server, httpx.Client(base_url=server.url) as api:
        assert api.get("/apis/example.com/v1/namespaces/default/widgets").status_code == 404
        crd = widget_crd()
        del crd["spec"]["names"]["singular"]
        response = api.post(CRDS, json=crd)
        assert response.status_code == 201
        status = response.json()["status"]
        conditions = {c["type"]: c["status"] for c in status["conditions"]}
        assert conditions == {"NamesAccepted": "True", "Established": "True"}
        assert status["acceptedNames"]["singular"] == "widget"
        assert status["acceptedNames"]["listKind"] == "WidgetList"
        assert status["storedVersions"] == ["v1"]
        assert resources.CRD_CLEANUP_FINALIZER in response.json()["metadata"]["finalizers"]
        assert api.get("/apis/example.com/v1/namespaces/default/widgets").json()["kind"] == "WidgetList"


def test_an_invalid_crd_is_refused(api: httpx.Client) -> None:
    """A CRD whose name is not <plural>.<group>, or without a storage version, is 422 Invalid."""
    crd = widget_crd()
    crd["metadata"]["name"] = "wrong.example.com"
    response = api.post(CRDS, json=crd)
    assert response.status_code == 422
    assert response.json()["details"]["causes"][0]["field"] == "metadata.name"
    crd = widget_crd()
    crd["metadata"]["name"] = "things.example.com"
    crd["spec"]["names"] = {"plural": "things", "kind": "Thing"}
    crd["spec"]["versions"][0]["storage"] = False
    assert api.post(CRDS, json=crd).status_code == 422


def test_updating_a_crd_updates_what_is_served(api: httpx.Client) -> None:
    """Changes to a CRD (new short name, new printer column) are served immediately."""
    crd = api.get(f"{CRDS}/widgets.example.com").json()
    crd["spec"]["names"]["shortNames"] = ["wd", "wdg"]
    assert api.put(f"{CRDS}/widgets.example.com", json=crd).status_code == 200
    assert by_name(api.get("/apis/example.com/v1").json())["widgets"]["shortNames"] == ["wd", "wdg"]


def test_multiple_versions_share_the_objects() -> None:
    """A CRD serving two versions serves the same objects under both (conversion: None)."""
    crd = widget_crd()
    v2 = {**crd["spec"]["versions"][0], "name": "v2", "storage": False}
    crd["spec"]["versions"].append(v2)
    with emulator.EmulatorServer(crds=[crd]) as server, httpx.Client(base_url=server.url) as api:
        api.post("/apis/example.com/v2/namespaces/default/widgets",
                 json={"apiVersion": "example.com/v2", "kind": "Widget", "metadata": {"name": "w"}})
        assert api.get("/apis/example.com/v1/namespaces/default/widgets/w").json()["apiVersion"] == "example.com/v1"
        assert api.get("/apis/example.com/v2/namespaces/default/widgets/w").json()["apiVersion"] == "example.com/v2"
        group = api.get("/apis/example.com").json()
        assert group["preferredVersion"]["version"] == "v2"


def test_version_and_health(api: httpx.Client) -> None:
    """/version reports a v1.33 server (kubectl's supported skew); /healthz and /readyz say ok."""
    version = api.get("/version").json()
    assert (version["major"], version["minor"]) == ("1", "33")
    assert api.get("/healthz").text == "ok" and api.get("/readyz").text == "ok"


def test_openapi_v3_describes_operations_and_schemas(api: httpx.Client) -> None:
    """/openapi/v3 indexes every group-version; each document has the PATCH operation with the
    fieldValidation parameter kubectl looks for and the CRD schema for kubectl explain.
    /openapi/v2 is 404, which kubectl tolerates."""
    index = api.get("/openapi/v3").json()["paths"]
    assert {"api/v1", "apis/apps/v1", "apis/example.com/v1"} <= set(index)
    document = api.get(index["apis/example.com/v1"]["serverRelativeURL"]).json()
    item = document["paths"]["/apis/example.com/v1/namespaces/{namespace}/widgets/{name}"]
    assert "fieldValidation" in [p["name"] for p in item["patch"]["parameters"]]
    assert item["patch"]["x-kubernetes-group-version-kind"] == {"group": "example.com", "version": "v1",
                                                                "kind": "Widget"}
    assert "application/strategic-merge-patch+json" not in item["patch"]["requestBody"]["content"]
    schema = document["components"]["schemas"]["com.example.v1.Widget"]
    assert schema["properties"]["spec"]["properties"]["size"]["type"] == "integer"
    assert api.get("/openapi/v2").status_code == 404


def test_discovery_is_not_writable(api: httpx.Client) -> None:
    """Discovery documents only answer GET (405 otherwise)."""
    assert api.post("/apis", json={}).status_code == 405
