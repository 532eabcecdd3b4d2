"""resourceVersion: one global counter, and optimistic concurrency on every write."""

from __future__ import annotations

import httpx

from tests.emulator.conftest import WIDGETS, json_patch, merge_patch, widget


def rv(obj: dict) -> int:  # type: ignore[type-arg]
    return int(obj["metadata"]["resourceVersion"])


def test_resource_version_is_global_and_grows_on_every_write(api: httpx.Client) -> None:
    """resourceVersion is an etcd-like global revision: every write of any object raises it."""
    a = api.post(WIDGETS, json=widget("a")).json()
    cm = api.post("/api/v1/namespaces/default/configmaps", json={"metadata": {"name": "c"}}).json()
    b = merge_patch(api, f"{WIDGETS}/a", {"spec": {"color": "red"}}).json()
    assert rv(a) < rv(cm) < rv(b)
    listed = api.get(WIDGETS).json()
    assert int(listed["metadata"]["resourceVersion"]) == rv(b)


def test_merge_patch_with_a_stale_resource_version_is_409_conflict(api: httpx.Client) -> None:
    """A PATCH carrying a stale metadata.resourceVersion is refused with 409 Conflict, as the
    API server's optimistic concurrency does; the current one is accepted."""
    created = api.post(WIDGETS, json=widget("w")).json()
    stale = created["metadata"]["resourceVersion"]
    assert merge_patch(api, f"{WIDGETS}/w", {"spec": {"color": "red"}}).status_code == 200
    response = merge_patch(api, f"{WIDGETS}/w", {"metadata": {"resourceVersion": stale}, "spec": {"color": "blue"}})
    assert response.status_code == 409
    status = response.json()
    assert status["reason"] == "Conflict"
    assert status["message"] == ('Operation cannot be fulfilled on widgets.example.com "w": the object has been '
                                 "modified; please apply your changes to the latest version and try again")
    assert api.get(f"{WIDGETS}/w").json()["spec"]["color"] == "red"
    current = api.get(f"{WIDGETS}/w").json()["metadata"]["resourceVersion"]
    ok = merge_patch(api, f"{WIDGETS}/w", {"metadata": {"resourceVersion": current}, "spec": {"color": "blue"}})
    assert ok.status_code == 200 and ok.json()["spec"]["color"] == "blue"


def test_status_patch_with_a_stale_resource_version_is_409(api: httpx.Client) -> None:
    """The /status subresource checks resourceVersion the same way (phase transitions are CAS)."""
    created = api.post(WIDGETS, json=widget("w")).json()
    stale = created["metadata"]["resourceVersion"]
    first = merge_patch(api, f"{WIDGETS}/w/status", {"metadata": {"resourceVersion": stale},
                                                      "status": {"phase": "Queued"}})
    assert first.status_code == 200
    second = merge_patch(api, f"{WIDGETS}/w/status", {"metadata": {"resourceVersion": stale},
                                                       "status": {"phase": "Running"}})
    assert second.status_code == 409
    assert api.get(f"{WIDGETS}/w").json()["status"] == {"phase": "Queued"}


def test_put_checks_the_resource_version_and_requires_it_for_custom_resources(api: httpx.Client) -> None:
    """PUT replaces the object if its resourceVersion is current (409 if stale); custom resources
    refuse an unconditional PUT (no resourceVersion) with 422, built-ins accept it."""
    created = api.post(WIDGETS, json=widget("w", size=1)).json()
    replacement = dict(created, spec={"size": 5})
    response = api.put(f"{WIDGETS}/w", json=replacement)
    assert response.status_code == 200 and response.json()["spec"] == {"size": 5}
    assert api.put(f"{WIDGETS}/w", json=replacement).status_code == 409  # created's RV is stale now
    unconditional = {k: v for k, v in replacement.items()}
    unconditional["metadata"] = {"name": "w"}
    response = api.put(f"{WIDGETS}/w", json=unconditional)
    assert response.status_code == 422
    assert "metadata.resourceVersion" in response.json()["message"]
    api.post("/api/v1/namespaces/default/configmaps", json={"metadata": {"name": "c"}, "data": {"a": "1"}})
    response = api.put("/api/v1/namespaces/default/configmaps/c", json={"metadata": {"name": "c"}, "data": {"a": "2"}})
    assert response.status_code == 200 and response.json()["data"] == {"a": "2"}


def test_put_with_another_name_is_400(api: httpx.Client) -> None:
    """The name in a PUT body must match the URL."""
    created = api.post(WIDGETS, json=widget("w")).json()
    created["metadata"]["name"] = "other"
    assert api.put(f"{WIDGETS}/w", json=created).status_code == 400


def test_two_writers_with_the_same_version_only_one_wins(api: httpx.Client) -> None:
    """Compare-and-swap: of two writers who read the same version, the second gets 409."""
    seen = api.post(WIDGETS, json=widget("w")).json()["metadata"]["resourceVersion"]
    results = [merge_patch(api, f"{WIDGETS}/w/status", {"metadata": {"resourceVersion": seen},
                                                          "status": {"phase": phase}}).status_code
               for phase in ("Running", "Failed")]
    assert results == [200, 409]


def test_json_patch_test_on_resource_version_guards_like_kopf_does(api: httpx.Client) -> None:
    """kopf's finalizer patch is a JSON patch whose first op tests /metadata/resourceVersion;
    a stale one fails with 422 (not 500) and changes nothing."""
    created = api.post(WIDGETS, json=widget("w")).json()
    stale = created["metadata"]["resourceVersion"]
    merge_patch(api, f"{WIDGETS}/w", {"metadata": {"labels": {"x": "y"}}})
    ops = [{"op": "test", "path": "/metadata/resourceVersion", "value": stale},
           {"op": "add", "path": "/metadata/finalizers", "value": ["kopf.zalando.org/KopfFinalizerMarker"]}]
    response = json_patch(api, f"{WIDGETS}/w", ops)
    assert response.status_code == 422
    assert response.json()["reason"] == "Invalid"
    assert "finalizers" not in api.get(f"{WIDGETS}/w").json()["metadata"]
    ops[0]["value"] = api.get(f"{WIDGETS}/w").json()["metadata"]["resourceVersion"]
    response = json_patch(api, f"{WIDGETS}/w", ops)
    assert response.status_code == 200
    assert response.json()["metadata"]["finalizers"] == ["kopf.zalando.org/KopfFinalizerMarker"]


def test_a_write_that_changes_nothing_keeps_the_resource_version(api: httpx.Client) -> None:
    """A no-op update is not persisted: same resourceVersion, no watch event."""
    created = api.post(WIDGETS, json=widget("w", color="red")).json()
    response = merge_patch(api, f"{WIDGETS}/w", {"spec": {"color": "red"}})
    assert response.status_code == 200
    assert response.json()["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
