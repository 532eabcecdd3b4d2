"""Server-side printing: meta.k8s.io/v1 Tables for kubectl get."""

from __future__ import annotations

import datetime

import httpx
import pytest
from agentrun_local.emulator import tables

from tests.emulator.conftest import WIDGETS, merge_patch, watch, widget

TABLE = ("application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
         "application/json")


def test_list_as_table_has_printer_columns(api: httpx.Client) -> None:
    """With Accept as=Table, a list is a Table: NAME plus the CRD's additionalPrinterColumns,
    cells computed from their JSONPaths (Age from creationTimestamp as 0s, 5m3s, ...)."""
    api.post(WIDGETS, json=widget("w", size=3))
    merge_patch(api, f"{WIDGETS}/w/status", {"status": {"phase": "Running", "conditions": [
        {"type": "Synced", "status": "False"}, {"type": "Ready", "status": "True"}]}})
    table = api.get(WIDGETS, headers={"Accept": TABLE}).json()
    assert table["kind"] == "Table" and table["apiVersion"] == "meta.k8s.io/v1"
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Phase", "Size", "Ready", "Age"]
    assert [c["type"] for c in table["columnDefinitions"]] == ["string", "string", "integer", "string", "date"]
    [row] = table["rows"]
    assert row["cells"][:4] == ["w", "Running", 3, "True"]
    assert row["cells"][4] in ("0s", "1s", "2s")
    assert row["object"]["kind"] == "PartialObjectMetadata" and row["object"]["metadata"]["name"] == "w"
    assert table["metadata"]["resourceVersion"]


def test_missing_cells_are_null_and_include_object(api: httpx.Client) -> None:
    """Absent values are null cells; includeObject=Object embeds the whole object."""
    api.post(WIDGETS, json=widget("w"))
    table = api.get(WIDGETS, headers={"Accept": TABLE}, params={"includeObject": "Object"}).json()
    assert table["rows"][0]["cells"][1] is None
    assert table["rows"][0]["object"]["kind"] == "Widget"


def test_single_object_and_builtins_as_table(api: httpx.Client) -> None:
    """GET of one object can be a Table too; built-in kinds get NAME and AGE."""
    api.post(WIDGETS, json=widget("w"))
    assert api.get(f"{WIDGETS}/w", headers={"Accept": TABLE}).json()["rows"][0]["cells"][0] == "w"
    api.post("/api/v1/namespaces/default/configmaps", json={"metadata": {"name": "c"}})
    table = api.get("/api/v1/namespaces/default/configmaps", headers={"Accept": TABLE}).json()
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Age"]


def test_watch_as_table_streams_rows(api: httpx.Client) -> None:
    """kubectl get -w watches as=Table: each event's object is a one-row Table, the first with
    the column definitions, later ones without (as kube-apiserver saves bandwidth)."""
    since = api.post(WIDGETS, json=widget("w")).json()["metadata"]["resourceVersion"]

    def progress() -> None:
        merge_patch(api, f"{WIDGETS}/w/status", {"status": {"phase": "Queued"}})
        merge_patch(api, f"{WIDGETS}/w/status", {"status": {"phase": "Running"}})

    with_accept = httpx.Client(base_url=str(api.base_url), headers={"Accept": TABLE})
    events = watch(with_accept, WIDGETS, {"resourceVersion": since}, 2, during=progress)
    assert [e["object"]["kind"] for e in events] == ["Table", "Table"]
    assert [e["object"]["rows"][0]["cells"][1] for e in events] == ["Queued", "Running"]
    assert events[0]["object"]["columnDefinitions"] and events[1]["object"]["columnDefinitions"] == []


@pytest.mark.parametrize(("seconds", "text"), [
    (0, "0s"), (59, "59s"), (119, "119s"), (125, "2m5s"), (600, "10m"), (3 * 3600 + 60, "3h1m"),
    (10 * 3600, "10h"), (3 * 86400 + 3600, "3d1h"), (30 * 86400, "30d"), (3 * 365 * 86400, "3y"), (-5, "<invalid>"),
])
def test_human_duration_matches_kubernetes(seconds: int, text: str) -> None:
    """Ages are printed as apimachinery's HumanDuration prints them."""
    assert tables.human_duration(seconds) == text


def test_jsonpath_subset() -> None:
    """Printer-column JSONPaths: fields, indexes, wildcards and filters."""
    obj = {"spec": {"items": [{"n": 1}, {"n": 2}], "m": {"a.b": "dotted"}},
           "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert tables.jsonpath(obj, ".spec.items[1].n") == [2]
    assert tables.jsonpath(obj, ".spec.items[*].n") == [1, 2]
    assert tables.jsonpath(obj, '.status.conditions[?(@.type=="Ready")].status') == ["True"]
    assert tables.jsonpath(obj, ".spec.m.a\\.b") == ["dotted"]
    assert tables.jsonpath(obj, "{.spec.missing}") == []
    now = datetime.datetime(2025, 1, 1, 0, 10, tzinfo=datetime.UTC)
    assert tables.cell("date", "2025-01-01T00:00:00Z", now) == "10m"
    assert tables.cell("string", True) == "true" and tables.cell("integer", "x") is None


def test_accept_negotiation() -> None:
    """Only an explicit as=Table;g=meta.k8s.io media type gets a Table."""
    assert tables.wanted(TABLE) == "v1"
    assert tables.wanted("application/json") is None
    assert tables.wanted("application/json;as=Table;v=v1beta1;g=meta.k8s.io") == "v1beta1"
    assert tables.wanted(None) is None
