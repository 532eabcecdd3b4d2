"""Lists: envelope, label and field selectors, pagination, and events."""

from __future__ import annotations

import httpx
import pytest
from agentrun_local.emulator import selectors

from tests.emulator.conftest import WIDGETS, widget

CONFIGMAPS = "/api/v1/namespaces/default/configmaps"


def test_list_envelope_has_list_kind_api_version_and_resource_version(api: httpx.Client) -> None:
    """A list is <Kind>List of the group version, with metadata.resourceVersion = the current revision."""
    api.post(WIDGETS, json=widget("b"))
    last = api.post(WIDGETS, json=widget("a")).json()
    listed = api.get(WIDGETS).json()
    assert listed["kind"] == "WidgetList" and listed["apiVersion"] == "example.com/v1"
    assert listed["metadata"]["resourceVersion"] == last["metadata"]["resourceVersion"]
    assert [i["metadata"]["name"] for i in listed["items"]] == ["a", "b"]
    assert all(i["kind"] == "Widget" for i in listed["items"])


def test_cluster_wide_list_of_a_namespaced_resource_spans_namespaces(api: httpx.Client) -> None:
    """GET /apis/g/v/plural (no namespace) lists the objects of all namespaces."""
    api.post("/api/v1/namespaces", json={"metadata": {"name": "other"}})
    api.post(WIDGETS, json=widget("a"))
    api.post("/apis/example.com/v1/namespaces/other/widgets", json=widget("b"))
    items = api.get("/apis/example.com/v1/widgets").json()["items"]
    assert [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in items] == [("default", "a"), ("other", "b")]
    assert [i["metadata"]["name"] for i in api.get(WIDGETS).json()["items"]] == ["a"]


@pytest.mark.parametrize(("selector", "expected"), [
    ("tier=web", ["w1", "w2"]),
    ("tier==web", ["w1", "w2"]),
    ("tier!=web", ["d1", "n1"]),
    ("tier in (web,db)", ["d1", "w1", "w2"]),
    ("tier notin (web)", ["d1", "n1"]),
    ("env", ["w1"]),
    ("!env", ["d1", "n1", "w2"]),
    ("tier=web,env=prod", ["w1"]),
    ("rank>1", ["w2"]),
])
def test_label_selectors(api: httpx.Client, selector: str, expected: list[str]) -> None:
    """labelSelector supports =, ==, !=, in, notin, exists, !exists and >/<; terms are ANDed."""
    for name, labels in (("w1", {"tier": "web", "env": "prod", "rank": "1"}), ("w2", {"tier": "web", "rank": "2"}),
                         ("d1", {"tier": "db"}), ("n1", {})):
        api.post(CONFIGMAPS, json={"metadata": {"name": name, "labels": labels}})
    items = api.get(CONFIGMAPS, params={"labelSelector": selector}).json()["items"]
    assert [i["metadata"]["name"] for i in items] == expected


def test_bad_label_selector_is_400(api: httpx.Client) -> None:
    """An unparsable selector is 400 BadRequest."""
    assert api.get(CONFIGMAPS, params={"labelSelector": "a in b"}).status_code == 400


def test_field_selectors_on_name_and_namespace(api: httpx.Client) -> None:
    """fieldSelector supports metadata.name and metadata.namespace (=, ==, !=) on every resource,
    other fields only where the API server indexes them (else 400 'field label not supported')."""
    for name in ("a", "b"):
        api.post(WIDGETS, json=widget(name))
    by_name = api.get("/apis/example.com/v1/widgets", params={"fieldSelector": "metadata.name=b"}).json()
    assert [i["metadata"]["name"] for i in by_name["items"]] == ["b"]
    not_a = api.get(WIDGETS, params={"fieldSelector": "metadata.name!=a,metadata.namespace==default"}).json()
    assert [i["metadata"]["name"] for i in not_a["items"]] == ["b"]
    response = api.get(WIDGETS, params={"fieldSelector": "spec.size=1"})
    assert response.status_code == 400
    assert response.json()["message"] == "field label not supported: spec.size"


def test_pagination_with_limit_and_continue(api: httpx.Client) -> None:
    """?limit=N returns N items and a continue token that yields the rest."""
    for name in "abcde":
        api.post(WIDGETS, json=widget(name))
    first = api.get(WIDGETS, params={"limit": "2"}).json()
    assert [i["metadata"]["name"] for i in first["items"]] == ["a", "b"]
    assert first["metadata"]["remainingItemCount"] == 3
    second = api.get(WIDGETS, params={"limit": "2", "continue": first["metadata"]["continue"]}).json()
    third = api.get(WIDGETS, params={"limit": "2", "continue": second["metadata"]["continue"]}).json()
    assert [i["metadata"]["name"] for i in second["items"] + third["items"]] == ["c", "d", "e"]
    assert "continue" not in third["metadata"]


def test_events_can_be_posted_and_selected_by_involved_object(api: httpx.Client) -> None:
    """Core v1 Events are created by POST (as kopf does) and listed with the involvedObject.*
    field selectors kubectl describe uses; events.k8s.io/v1 serves the same events renamed
    (involvedObject -> regarding, message -> note)."""
    target = api.post(WIDGETS, json=widget("w")).json()
    involved = {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w", "namespace": "default",
                "uid": target["metadata"]["uid"]}
    response = api.post("/api/v1/namespaces/default/events", json={
        "apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "kopf-event-"},
        "involvedObject": involved, "reason": "Created", "message": "hello", "type": "Normal",
        "source": {"component": "kopf"}})
    assert response.status_code == 201
    api.post("/api/v1/namespaces/default/events", json={
        "metadata": {"name": "unrelated"}, "involvedObject": {**involved, "name": "x", "uid": "u"}, "reason": "X"})
    selector = ("involvedObject.name=w,involvedObject.namespace=default,involvedObject.kind=Widget,"
                f"involvedObject.uid={target['metadata']['uid']}")
    items = api.get("/api/v1/namespaces/default/events", params={"fieldSelector": selector}).json()["items"]
    assert [i["message"] for i in items] == ["hello"]
    new_api = api.get("/apis/events.k8s.io/v1/namespaces/default/events",
                      params={"fieldSelector": "regarding.name=w"}).json()["items"]
    assert [(i["apiVersion"], i["note"], i["regarding"]["uid"]) for i in new_api] == [
        ("events.k8s.io/v1", "hello", target["metadata"]["uid"])]
    posted = api.post("/apis/events.k8s.io/v1/namespaces/default/events", json={
        "apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "new-style"},
        "regarding": involved, "note": "from the new API", "reason": "Tested", "type": "Normal",
        "reportingController": "tests", "reportingInstance": "t1", "action": "Test",
        "eventTime": "2025-01-01T00:00:00.000000Z"})
    assert posted.status_code == 201
    core = api.get("/api/v1/namespaces/default/events/new-style").json()
    assert core["message"] == "from the new API" and core["involvedObject"]["name"] == "w"


def test_selector_parsing_directly() -> None:
    """Selector parsing handles parentheses, escapes and whitespace."""
    requirements = selectors.parse_labels("a in (x, y),!b, c!=d")
    assert [(r.key, r.operator, r.values) for r in requirements] == [
        ("a", "in", ("x", "y")), ("b", "!", ()), ("c", "!=", ("d",))]
    fields = selectors.parse_fields(r"metadata.name=a\,b,x!=y")
    assert [(r.key, r.operator, r.values) for r in fields] == [("metadata.name", "=", ("a,b",)), ("x", "!=", ("y",))]
    assert selectors.match_fields(fields[:1], {"metadata": {"name": "a,b"}})
