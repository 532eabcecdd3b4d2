"""The PATCH content types: merge, JSON, strategic merge and server-side apply."""

from __future__ import annotations

import json

import httpx
import yaml
from agentrun_local.emulator import patching

from tests.emulator.conftest import WIDGETS, json_patch, merge_patch, widget

DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"


def test_merge_patch_merges_maps_replaces_lists_and_null_deletes(api: httpx.Client) -> None:
    """application/merge-patch+json is RFC 7386: nested maps merge, lists are replaced, null deletes."""
    api.post(WIDGETS, json=widget("w", size=1, color="red"))
    merge_patch(api, f"{WIDGETS}/w", {"metadata": {"labels": {"a": "1", "b": "2"}}})
    response = merge_patch(api, f"{WIDGETS}/w", {"metadata": {"labels": {"a": None}}, "spec": {"color": None}})
    obj = response.json()
    assert obj["metadata"]["labels"] == {"b": "2"}
    assert obj["spec"] == {"size": 1}


def test_json_patch_applies_rfc6902_operations(api: httpx.Client) -> None:
    """application/json-patch+json applies add/replace/remove/test; a bad path is 422."""
    api.post(WIDGETS, json=widget("w", size=1))
    response = json_patch(api, f"{WIDGETS}/w", [
        {"op": "add", "path": "/metadata/annotations", "value": {"k": "v"}},
        {"op": "replace", "path": "/spec/size", "value": 3},
        {"op": "test", "path": "/spec/size", "value": 3},
    ])
    assert response.status_code == 200
    assert response.json()["spec"]["size"] == 3 and response.json()["metadata"]["annotations"] == {"k": "v"}
    response = json_patch(api, f"{WIDGETS}/w", [{"op": "remove", "path": "/spec/nothing"}])
    assert response.status_code == 422


def test_strategic_merge_patch_merges_containers_by_name(api: httpx.Client) -> None:
    """application/strategic-merge-patch+json merges lists by their merge key (containers and env
    by name) and honours $patch: delete, for built-in kinds."""
    api.post(DEPLOYMENTS, json={"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"}, "spec": {
        "template": {"spec": {"containers": [
            {"name": "app", "image": "app:1", "env": [{"name": "A", "value": "1"}]},
            {"name": "side", "image": "side:1"}]}}}})
    response = api.patch(f"{DEPLOYMENTS}/d", headers={"Content-Type": patching.STRATEGIC}, content=json.dumps(
        {"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "app"}, {"name": "side"}],
            "containers": [{"name": "app", "image": "app:2", "env": [{"name": "B", "value": "2"}]},
                           {"name": "side", "$patch": "delete"}]}}},
         "metadata": {"finalizers": ["x"]}}))
    assert response.status_code == 200, response.text
    containers = response.json()["spec"]["template"]["spec"]["containers"]
    assert containers == [{"name": "app", "image": "app:2",
                           "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]}]


def test_strategic_merge_patch_of_a_custom_resource_is_415(api: httpx.Client) -> None:
    """kube-apiserver does not support strategic merge patches for custom resources: 415."""
    api.post(WIDGETS, json=widget("w"))
    response = api.patch(f"{WIDGETS}/w", headers={"Content-Type": patching.STRATEGIC}, content=b'{"spec":{}}')
    assert response.status_code == 415
    assert response.json()["reason"] == "UnsupportedMediaType"


def test_unknown_patch_type_is_415(api: httpx.Client) -> None:
    """Patches with another content type are refused with 415 UnsupportedMediaType."""
    api.post(WIDGETS, json=widget("w"))
    assert api.patch(f"{WIDGETS}/w", headers={"Content-Type": "text/plain"}, content=b"x").status_code == 415


def test_server_side_apply_creates_then_merges(api: httpx.Client) -> None:
    """application/apply-patch+yaml creates a missing object (201) and merges into an existing one
    (200); it requires ?fieldManager= (422 without). Field ownership is not emulated."""
    manifest = yaml.safe_dump(widget("applied", size=2))
    headers = {"Content-Type": patching.APPLY}
    assert api.patch(f"{WIDGETS}/applied", headers=headers, content=manifest).status_code == 422
    response = api.patch(f"{WIDGETS}/applied", params={"fieldManager": "test"}, headers=headers, content=manifest)
    assert response.status_code == 201
    manifest = yaml.safe_dump(widget("applied", color="red"))
    response = api.patch(f"{WIDGETS}/applied", params={"fieldManager": "test"}, headers=headers, content=manifest)
    assert response.status_code == 200
    assert response.json()["spec"] == {"size": 2, "color": "red"}


def test_dry_run_does_not_persist(api: httpx.Client) -> None:
    """?dryRun=All validates and returns the result without storing anything."""
    assert api.post(WIDGETS, params={"dryRun": "All"}, json=widget("w")).status_code == 201
    assert api.get(f"{WIDGETS}/w").status_code == 404
    api.post(WIDGETS, json=widget("w", size=1))
    response = api.patch(f"{WIDGETS}/w", params={"dryRun": "All"}, headers={"Content-Type": patching.MERGE},
                         content=b'{"spec":{"size":5}}')
    assert response.json()["spec"]["size"] == 5
    assert api.get(f"{WIDGETS}/w").json()["spec"]["size"] == 1


def test_patch_functions_directly() -> None:
    """The patch functions never modify their inputs; strategic merge unions finalizers."""
    target = {"a": {"b": 1, "c": [1, 2]}, "metadata": {"finalizers": ["x"]}}
    assert patching.merge(target, {"a": {"c": [3], "b": None}}) == {"a": {"c": [3]}, "metadata": {"finalizers": ["x"]}}
    assert target == {"a": {"b": 1, "c": [1, 2]}, "metadata": {"finalizers": ["x"]}}
    assert patching.strategic(target, {"metadata": {"finalizers": ["y", "x"]}})["metadata"]["finalizers"] == ["x", "y"]
    assert patching.strategic(target, {"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"]}})[
        "metadata"]["finalizers"] == []
    assert patching.strategic(target, {"a": {"$patch": "replace", "z": 1}})["a"] == {"z": 1}
