"""Watches: initial state, resuming from a resourceVersion, selectors, timeouts and expiry."""

from __future__ import annotations

import time

import httpx
from agentrun_local import emulator

from tests.emulator.conftest import WIDGETS, merge_patch, watch, widget, widget_crd


def names(events: list[dict]) -> list[tuple[str, str]]:  # type: ignore[type-arg]
    return [(e["type"], e["object"]["metadata"]["name"]) for e in events]


def test_watch_without_resource_version_starts_with_the_current_state(api: httpx.Client) -> None:
    """With no resourceVersion (or "0"), a watch first sends ADDED for every existing object,
    then the changes as they happen."""
    api.post(WIDGETS, json=widget("old"))
    for since in ({}, {"resourceVersion": "0"}):
        events = watch(api, WIDGETS, since, 1)
        assert names(events) == [("ADDED", "old")]
    events = watch(api, WIDGETS, {}, 2, during=lambda: api.post(WIDGETS, json=widget("new")))
    assert names(events) == [("ADDED", "old"), ("ADDED", "new")]


def test_watch_from_a_resource_version_sends_only_later_events(api: httpx.Client) -> None:
    """With resourceVersion=N, only changes after N are sent: no replay of existing objects
    (this is what keeps kopf from handling every object twice after its initial list)."""
    api.post(WIDGETS, json=widget("a"))
    listed = api.get(WIDGETS).json()
    since = listed["metadata"]["resourceVersion"]
    merge_patch(api, f"{WIDGETS}/a", {"spec": {"size": 2}})  # after the list: must be delivered
    events = watch(api, WIDGETS, {"resourceVersion": since}, 2,
                   during=lambda: api.post(WIDGETS, json=widget("b")))
    assert names(events) == [("MODIFIED", "a"), ("ADDED", "b")]
    assert all(int(e["object"]["metadata"]["resourceVersion"]) > int(since) for e in events)


def test_watch_events_carry_the_object_as_it_was_at_that_version(api: httpx.Client) -> None:
    """Each event holds the object's state at that resourceVersion, even when later writes
    happened before the client read it."""
    since = api.post(WIDGETS, json=widget("w", size=1)).json()["metadata"]["resourceVersion"]
    for size in (2, 3, 4):
        merge_patch(api, f"{WIDGETS}/w", {"spec": {"size": size}})
    api.delete(f"{WIDGETS}/w")
    events = watch(api, WIDGETS, {"resourceVersion": since}, 4)
    assert [e["type"] for e in events] == ["MODIFIED", "MODIFIED", "MODIFIED", "DELETED"]
    assert [e["object"]["spec"]["size"] for e in events] == [2, 3, 4, 4]
    versions = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions)


def test_watch_ends_after_timeout_seconds(api: httpx.Client) -> None:
    """?timeoutSeconds=N closes the stream after N seconds (kopf reconnects with its last version)."""
    started = time.monotonic()
    with api.stream("GET", WIDGETS, params={"watch": "true", "timeoutSeconds": "1", "resourceVersion": "1"}) as r:
        assert list(r.iter_lines()) == []
    assert 0.9 <= time.monotonic() - started < 3


def test_watch_with_a_label_selector_reports_entering_and_leaving(api: httpx.Client) -> None:
    """A selector watch reports an object whose labels start matching as ADDED and one that stops
    matching as DELETED, as the watch cache does."""
    since = api.post(WIDGETS, json=widget("w")).json()["metadata"]["resourceVersion"]

    def relabel() -> None:
        merge_patch(api, f"{WIDGETS}/w", {"metadata": {"labels": {"team": "a"}}})
        merge_patch(api, f"{WIDGETS}/w", {"spec": {"size": 2}})
        merge_patch(api, f"{WIDGETS}/w", {"metadata": {"labels": {"team": "b"}}})

    events = watch(api, WIDGETS, {"resourceVersion": since, "labelSelector": "team=a"}, 3, during=relabel)
    assert [e["type"] for e in events] == ["ADDED", "MODIFIED", "DELETED"]


def test_watch_of_one_object_by_field_selector(api: httpx.Client) -> None:
    """kubectl get NAME -w watches with fieldSelector=metadata.name=NAME: only that object."""
    api.post(WIDGETS, json=widget("a"))
    api.post(WIDGETS, json=widget("b"))
    since = api.get(WIDGETS).json()["metadata"]["resourceVersion"]

    def touch() -> None:
        merge_patch(api, f"{WIDGETS}/a", {"spec": {"size": 5}})
        merge_patch(api, f"{WIDGETS}/b", {"spec": {"size": 5}})

    events = watch(api, WIDGETS, {"resourceVersion": since, "fieldSelector": "metadata.name=b"}, 1, during=touch)
    assert names(events) == [("MODIFIED", "b")]


def test_namespaced_watch_sees_only_its_namespace(api: httpx.Client) -> None:
    """A namespaced watch sees only its namespace; a cluster-wide watch sees all."""
    api.post("/api/v1/namespaces", json={"metadata": {"name": "other"}})
    since = str(api.get(WIDGETS).json()["metadata"]["resourceVersion"])

    def create_both() -> None:
        api.post("/apis/example.com/v1/namespaces/other/widgets", json=widget("there"))
        api.post(WIDGETS, json=widget("here"))

    assert names(watch(api, WIDGETS, {"resourceVersion": since}, 1, during=create_both)) == [("ADDED", "here")]
    everywhere = watch(api, "/apis/example.com/v1/widgets", {"resourceVersion": since}, 2)
    assert names(everywhere) == [("ADDED", "there"), ("ADDED", "here")]


def test_initial_events_end_with_a_bookmark(api: httpx.Client) -> None:
    """sendInitialEvents=true (streaming lists, kopf's initial_streaming) ends the initial ADDED
    events with a BOOKMARK annotated k8s.io/initial-events-end."""
    api.post(WIDGETS, json=widget("a"))
    events = watch(api, WIDGETS, {"sendInitialEvents": "true", "resourceVersionMatch": "NotOlderThan",
                                  "allowWatchBookmarks": "true"}, 2)
    assert [e["type"] for e in events] == ["ADDED", "BOOKMARK"]
    assert events[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_bookmarks_carry_the_current_version(server: emulator.EmulatorServer, api: httpx.Client) -> None:
    """With allowWatchBookmarks=true, idle watches get BOOKMARK events with the latest
    resourceVersion (also of writes to other resources), so a resumed watch starts there."""
    server.emulator.bookmark_interval = 0.2
    since = api.get(WIDGETS).json()["metadata"]["resourceVersion"]
    latest = api.post("/api/v1/namespaces/default/configmaps", json={"metadata": {"name": "c"}}).json()
    events = watch(api, WIDGETS, {"resourceVersion": since, "allowWatchBookmarks": "true"}, 1)
    assert events[0]["type"] == "BOOKMARK"
    assert events[0]["object"]["metadata"]["resourceVersion"] == latest["metadata"]["resourceVersion"]


def test_too_old_resource_version_is_410_gone() -> None:
    """Resuming from a resourceVersion older than the watch cache yields an ERROR event with a
    410 Status, which tells kopf and client-go to list again."""
    with emulator.EmulatorServer(crds=[widget_crd()]) as server, httpx.Client(base_url=server.url) as api:
        server.emulator.watch_cache_size = 3
        for index in range(5):
            api.post(WIDGETS, json=widget(f"w{index}"))
        events = watch(api, WIDGETS, {"resourceVersion": "1"}, 1)
        assert events[0]["type"] == "ERROR"
        assert events[0]["object"]["code"] == 410 and events[0]["object"]["reason"] == "Expired"


def test_stop_ends_open_watches_promptly() -> None:
    """Stopping the server ends the watch streams instead of waiting for their timeouts."""
    server = emulator.EmulatorServer(crds=[widget_crd()])
    server.start()
    with httpx.Client(base_url=server.url) as api:
        with api.stream("GET", WIDGETS, params={"watch": "true", "resourceVersion": "1"}) as response:
            started = time.monotonic()
            server.stop()
            assert list(response.iter_lines()) == []
    assert time.monotonic() - started < 5
