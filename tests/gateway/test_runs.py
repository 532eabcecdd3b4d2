"""The run endpoints: list and filter, get, create (checked against the CRD), stop, messages."""

from __future__ import annotations

import uuid
from typing import Any

from agentrun import control, store
from tests.gateway.conftest import Bed


def _body(name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"input": "hi", "agent": {"model": "scripted"}, **spec}}


async def test_runs_are_listed_filtered_by_phase_and_thread_and_fetched(gateway: Bed) -> None:
    ns = gateway.namespace()
    gateway.create_run(ns, "a", threadId="t-1", status={"phase": "Running", "attempt": 1})
    gateway.create_run(ns, "b", status={"phase": "Succeeded", "attempt": 1, "threadId": "t-2"})
    gateway.create_run(ns, "c", threadId="t-1", status={"phase": "Succeeded", "attempt": 1})
    headers = gateway.keys.auth([ns])
    base = f"/v1/namespaces/{ns}/runs"
    async with gateway.client(headers=headers) as client:
        async def names(**params: str) -> list[str]:
            response = await client.get(base, params=params)
            assert response.status_code == 200, response.text
            return sorted(r["metadata"]["name"] for r in response.json()["items"])

        assert await names() == ["a", "b", "c"]
        assert await names(phase="Succeeded") == ["b", "c"]
        assert await names(thread="t-1") == ["a", "c"]
        assert await names(thread="t-2") == ["b"]  # the thread the operator recorded in status
        assert await names(phase="Succeeded", thread="t-1") == ["c"]
        bad = await client.get(base, params={"phase": "Done"})
        assert bad.status_code == 422 and "phase" in bad.json()["message"]
        one = await client.get(f"{base}/a")
        assert one.status_code == 200 and one.json()["status"]["phase"] == "Running"
        missing = await client.get(f"{base}/nope")
        assert missing.status_code == 404 and "nope" in missing.json()["message"]


async def test_a_run_is_created_through_the_gateway(gateway: Bed) -> None:
    ns = gateway.namespace()
    async with gateway.client(headers=gateway.keys.auth([ns])) as client:
        response = await client.post(f"/v1/namespaces/{ns}/runs", json=_body("made", timeoutSeconds=60))
        assert response.status_code == 201, response.text
        again = await client.post(f"/v1/namespaces/{ns}/runs", json=_body("made"))
    created = gateway.get_run(ns, "made")
    assert created["metadata"]["uid"] == response.json()["metadata"]["uid"]
    assert created["spec"]["agent"]["maxIterations"] == 100  # the CRD's defaults applied
    assert again.status_code == 409


async def test_an_invalid_run_is_refused_with_errors_naming_the_field(gateway: Bed) -> None:
    ns = gateway.namespace()
    cases = {
        "spec.agent.maxIterations": _body("x", agent={"model": "scripted", "maxIterations": 0}),
        "spec.bogus": _body("x", bogus=True),
        "metadata.name": _body("Not_A_Name"),
        "metadata.namespace": {**_body("x"), "metadata": {"name": "x", "namespace": "elsewhere"}},
        "kind": {**_body("x"), "kind": "WorkerPool"},
        "spec": {"metadata": {"name": "x"}},
    }
    async with gateway.client(headers=gateway.keys.auth([ns])) as client:
        for field, body in cases.items():
            response = await client.post(f"/v1/namespaces/{ns}/runs", json=body)
            assert response.status_code == 422, (field, response.text)
            answer = response.json()
            assert field in [e["field"] for e in answer["errors"]], (field, answer)
            assert field in answer["message"]
        not_json = await client.post(f"/v1/namespaces/{ns}/runs", content=b"{", headers={"content-type": "x"})
        assert not_json.status_code == 400
        huge = await client.post(f"/v1/namespaces/{ns}/runs", json=_body("x", input="a" * 300_000))
        assert huge.status_code == 413 and "inputFrom" in huge.json()["message"]
    listed = (await _list(gateway, ns))
    assert listed == []  # nothing was created


async def _list(gateway: Bed, ns: str) -> list[dict[str, Any]]:
    async with gateway.client(headers=gateway.keys.auth([ns])) as client:
        items: list[dict[str, Any]] = (await client.get(f"/v1/namespaces/{ns}/runs")).json()["items"]
        return items


async def test_stop_sets_the_durable_flag_and_spec_stop(gateway: Bed, redis: Any) -> None:
    # Given a running run
    ns = gateway.namespace()
    run = gateway.create_run(ns, "busy", status={"phase": "Running", "attempt": 1})
    uid = run["metadata"]["uid"]
    control_channel = redis.pubsub()
    from agentrun import keys

    await control_channel.subscribe(keys.control(uid))
    await control_channel.get_message(timeout=1)  # the subscribe confirmation
    # When it is stopped through the gateway
    async with gateway.client(headers=gateway.keys.auth([ns])) as client:
        response = await client.post(f"/v1/namespaces/{ns}/runs/busy/stop")
        # Then the resource says so, the worker's durable flag is set and the worker is woken up
        assert response.status_code == 202, response.text
        assert response.json()["spec"]["stop"] is True
        assert gateway.get_run(ns, "busy")["spec"]["stop"] is True
        assert await control.stop_requested(redis, uid) == "StopRequested"
        wake = await control_channel.get_message(timeout=5)
        assert wake is not None and wake["data"] == control.STOP
        await control_channel.aclose()
        # A finished run cannot be stopped; a missing one is not found
        gateway.set_status(ns, "busy", {"phase": "Stopped"})
        assert (await client.post(f"/v1/namespaces/{ns}/runs/busy/stop")).status_code == 409
        assert (await client.post(f"/v1/namespaces/{ns}/runs/ghost/stop")).status_code == 404


async def test_thread_messages_come_from_the_database_and_stay_in_their_namespace(
    gateway: Bed, db: store.Store
) -> None:
    ns, other = gateway.namespace(), gateway.namespace()
    thread, uid = f"t-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    await db.ensure_thread(thread, namespace=ns)
    await db.upsert_run(store.RunRecord(id=uid, namespace=ns, name="talk", thread_id=thread, status="Running"))
    for role, text in [("user", "hi"), ("assistant", "hello"), ("user", "bye")]:
        await db.add_message(thread, role, text, run_id=uid)
    async with gateway.client() as client:
        url = f"/v1/namespaces/{ns}/threads/{thread}/messages"
        response = await client.get(url, headers=gateway.keys.auth([ns]))
        assert response.status_code == 200, response.text
        assert [(m["seq"], m["role"], m["content"]) for m in response.json()["items"]] == [
            (1, "user", "hi"), (2, "assistant", "hello"), (3, "user", "bye")]
        after = await client.get(url, params={"after": 1, "limit": 1}, headers=gateway.keys.auth([ns]))
        assert [m["seq"] for m in after.json()["items"]] == [2]
        # Even a token for both namespaces does not find the thread under the wrong one
        wrong = await client.get(f"/v1/namespaces/{other}/threads/{thread}/messages",
                                 headers=gateway.keys.auth([ns, other]))
        assert wrong.status_code == 404
