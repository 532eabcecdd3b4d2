"""metadata.generation, the status subresource and the scale subresource."""

from __future__ import annotations

from typing import Any

import httpx

from tests.emulator.conftest import GADGETS, WIDGETS, merge_patch, widget


def test_generation_counts_spec_changes_only(api: httpx.Client) -> None:
    """generation is 1 on create and grows when the spec changes; metadata and status writes
    leave it alone (so observedGeneration comparisons work)."""
    api.post(WIDGETS, json=widget("w", size=1))
    def generation_after(path: str, body: dict[str, Any]) -> int:
        return int(merge_patch(api, path, body).json()["metadata"]["generation"])

    assert generation_after(f"{WIDGETS}/w", {"spec": {"size": 2}}) == 2
    assert generation_after(f"{WIDGETS}/w", {"metadata": {"labels": {"a": "b"}}}) == 2
    assert generation_after(f"{WIDGETS}/w/status", {"status": {"phase": "Running"}}) == 2
    assert generation_after(f"{WIDGETS}/w", {"spec": {"color": "red"}}) == 3


def test_status_subresource_writes_change_only_the_status(api: httpx.Client) -> None:
    """With subresources.status, a write to /status changes .status and nothing else."""
    api.post(WIDGETS, json=widget("w", size=1))
    response = merge_patch(api, f"{WIDGETS}/w/status", {
        "spec": {"size": 99}, "metadata": {"labels": {"sneaky": "yes"}}, "status": {"phase": "Running"}})
    assert response.status_code == 200
    obj = api.get(f"{WIDGETS}/w").json()
    assert obj["status"] == {"phase": "Running"}
    assert obj["spec"]["size"] == 1
    assert "labels" not in obj["metadata"]
    assert api.get(f"{WIDGETS}/w/status").json()["status"] == {"phase": "Running"}


def test_main_resource_writes_ignore_the_status(api: httpx.Client) -> None:
    """With subresources.status, .status in a create, patch or PUT of the main resource is ignored."""
    body = widget("w", size=1)
    body["status"] = {"phase": "Forged"}
    created = api.post(WIDGETS, json=body).json()
    assert "status" not in created
    merge_patch(api, f"{WIDGETS}/w/status", {"status": {"phase": "Queued"}})
    response = merge_patch(api, f"{WIDGETS}/w", {"spec": {"size": 2}, "status": {"phase": "Forged"}})
    assert response.json()["status"] == {"phase": "Queued"}
    current = api.get(f"{WIDGETS}/w").json()
    current["status"] = {"phase": "Forged"}
    assert api.put(f"{WIDGETS}/w", json=current).json()["status"] == {"phase": "Queued"}


def test_without_status_subresource_status_is_part_of_the_object(api: httpx.Client) -> None:
    """Without subresources.status, .status is written through the main resource, /status is 404,
    and a status change counts as a generation change."""
    body = {"apiVersion": "example.com/v1", "kind": "Gadget", "metadata": {"name": "g"}, "status": {"x": 1}}
    assert api.post(GADGETS, json=body).json()["status"] == {"x": 1}
    assert merge_patch(api, f"{GADGETS}/g/status", {"status": {"x": 2}}).status_code == 404
    response = merge_patch(api, f"{GADGETS}/g", {"status": {"x": 2}})
    assert response.json()["status"] == {"x": 2}
    assert response.json()["metadata"]["generation"] == 2


def test_scale_subresource_reads_and_writes_replicas(api: httpx.Client) -> None:
    """/scale serves an autoscaling/v1 Scale view of spec.replicas, for Deployments and for
    CRDs that declare subresources.scale; writing it changes the object's spec."""
    api.post("/apis/apps/v1/namespaces/default/deployments", json={
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "d"}}}})
    scale = api.get("/apis/apps/v1/namespaces/default/deployments/d/scale").json()
    assert scale["kind"] == "Scale" and scale["spec"] == {"replicas": 1}
    assert scale["status"]["selector"] == "app=d"
    response = merge_patch(api, "/apis/apps/v1/namespaces/default/deployments/d/scale", {"spec": {"replicas": 4}})
    assert response.status_code == 200 and response.json()["spec"]["replicas"] == 4
    deployment = api.get("/apis/apps/v1/namespaces/default/deployments/d").json()
    assert deployment["spec"]["replicas"] == 4 and deployment["metadata"]["generation"] == 2

    api.post(WIDGETS, json=widget("w", replicas=2))
    scale = api.get(f"{WIDGETS}/w/scale").json()
    scale["spec"]["replicas"] = 3
    assert api.put(f"{WIDGETS}/w/scale", json=scale).status_code == 200
    assert api.get(f"{WIDGETS}/w").json()["spec"]["replicas"] == 3
    assert api.put(f"{WIDGETS}/w/scale", json=scale).status_code == 409  # stale resourceVersion
