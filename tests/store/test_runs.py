"""Runs in the store, on SQLite, the real PostgreSQL and Supabase: upsert, the phase rule, JSON, time."""

from __future__ import annotations

import asyncio
import datetime
import itertools

import pytest

from agentrun import phases
from agentrun import store as stores
from tests.store import conftest

ALL_PHASES = list(phases.Phase)


def run_record(status: str = "Queued", attempt: int = 1, **fields: object) -> stores.RunRecord:
    values: dict[str, object] = {
        "id": conftest.new_id(), "namespace": "team-a", "name": "hello", "thread_id": conftest.new_id()}
    values.update(fields)
    return stores.RunRecord(status=status, attempt=attempt, **values)  # type: ignore[arg-type]


async def test_upsert_inserts_once_and_never_touches_the_lifecycle(store: stores.Store) -> None:
    # Given a run recorded as Running
    run = run_record("Queued", metadata={"model": "m1"})
    await store.upsert_run(run)
    assert await store.transition(run.id, "Running", attempt=1, worker_instance="w1")
    # When the same run is upserted again, with an older status and a new identity
    new_thread = conftest.new_id()  # unique: the backends may share one database
    again = stores.RunRecord(
        id=run.id, namespace="team-b", name="renamed", thread_id=new_thread, status="Pending", attempt=7,
        result="nope", metadata={"pool": "gpu"}, started_at=datetime.datetime(2001, 1, 1, tzinfo=datetime.UTC),
    )
    await store.upsert_run(again)
    await store.upsert_run(again)
    # Then identity fields follow, metadata merges, and status/attempt/results/timestamps stay
    got = await store.get_run(run.id)
    assert got is not None
    assert (got.namespace, got.name, got.thread_id) == ("team-b", "renamed", new_thread)
    assert got.metadata == {"model": "m1", "pool": "gpu"}
    assert (got.status, got.attempt, got.result, got.worker_instance) == ("Running", 1, None, "w1")
    assert got.started_at is None
    assert len(await store.list_runs(thread_id=new_thread)) == 1


async def test_upsert_with_empty_metadata_keeps_what_is_there(store: stores.Store) -> None:
    run = run_record(metadata={"model": "m1", "workerPool": "default"})
    await store.upsert_run(run)
    await store.upsert_run(run_record(id=run.id, thread_id=run.thread_id))
    got = await store.get_run(run.id)
    assert got is not None and got.metadata == {"model": "m1", "workerPool": "default"}


async def test_forward_transitions_apply_and_backward_ones_are_refused(store: stores.Store) -> None:
    run = run_record("Pending")
    await store.upsert_run(run)
    for phase in ("Queued", "Running", "Stopping"):
        assert await store.transition(run.id, phase, attempt=1)
    # A late Queued or Running never overwrites Stopping
    assert not await store.transition(run.id, "Queued", attempt=1)
    assert not await store.transition(run.id, "Running", attempt=1)
    got = await store.get_run(run.id)
    assert got is not None and got.status == "Stopping"


async def test_same_attempt_reassert_is_allowed_and_keeps_recorded_timestamps(store: stores.Store) -> None:
    run = run_record("Queued")
    await store.upsert_run(run)
    first = datetime.datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=datetime.UTC)
    assert await store.transition(run.id, "Running", attempt=1, started_at=first, worker_instance="w1")
    # When the same write is retried later
    assert await store.transition(
        run.id, "Running", attempt=1, started_at=first + datetime.timedelta(seconds=5), worker_instance="w1"
    )
    got = await store.get_run(run.id)
    assert got is not None and got.started_at == first


async def test_terminal_phases_are_final(store: stores.Store) -> None:
    run = run_record("Running")
    await store.upsert_run(run)
    assert await store.transition(run.id, "Succeeded", attempt=1, result="42", usage={"input_tokens": 3})
    for phase, attempt in itertools.product(ALL_PHASES, (1, 2)):
        assert not await store.transition(run.id, phase, attempt=attempt, result="changed")
    got = await store.get_run(run.id)
    assert got is not None
    assert (got.status, got.result, got.usage) == ("Succeeded", "42", {"input_tokens": 3})


async def test_a_newer_attempt_may_restart_from_queued_and_an_older_one_may_not(store: stores.Store) -> None:
    # Given attempt 1 running on a worker that was lost
    run = run_record("Queued")
    await store.upsert_run(run)
    assert await store.transition(run.id, "Running", attempt=1, worker_instance="lost")
    # When the operator retries with attempt 2
    assert await store.transition(run.id, "Queued", attempt=2, reason="WorkerLost")
    # Then the lost worker's late writes for attempt 1 are refused
    assert not await store.transition(run.id, "Succeeded", attempt=1, result="stale")
    assert await store.transition(run.id, "Running", attempt=2, worker_instance="new")
    got = await store.get_run(run.id)
    assert got is not None
    assert (got.status, got.attempt, got.reason, got.worker_instance, got.result) == (
        "Running", 2, "WorkerLost", "new", None)


async def test_transition_fields_none_leaves_columns_and_values_replace_them(store: stores.Store) -> None:
    run = run_record("Running", reason="Started", usage={"a": 1})
    await store.upsert_run(run)
    finished = datetime.datetime.now(datetime.UTC)
    assert await store.transition(run.id, "Failed", attempt=1, error="the model exploded", finished_at=finished)
    got = await store.get_run(run.id)
    assert got is not None
    assert (got.status, got.reason, got.error, got.usage, got.finished_at) == (
        "Failed", "Started", "the model exploded", {"a": 1}, finished)
    assert got.updated_at is not None and got.created_at is not None and got.updated_at >= got.created_at


async def test_transition_of_an_unknown_run_applies_nothing(store: stores.Store) -> None:
    assert not await store.transition(conftest.new_id(), "Running", attempt=1)


async def test_an_unknown_phase_is_refused(store: stores.Store) -> None:
    run = run_record()
    await store.upsert_run(run)
    with pytest.raises(ValueError, match="unknown phase 'Bogus'"):
        await store.transition(run.id, "Bogus", attempt=1)
    with pytest.raises(ValueError, match="unknown phase"):
        await store.upsert_run(run_record("running"))


async def test_the_sql_rule_agrees_with_phases_may_transition_everywhere(store: stores.Store) -> None:
    # Given every current phase at attempt 2, and every new phase at attempts 1, 2 and 3
    cases = list(itertools.product(ALL_PHASES, ALL_PHASES, (-1, 0, 1)))
    runs = {case: run_record(case[0].value, attempt=2) for case in cases}
    await asyncio.gather(*(store.upsert_run(r) for r in runs.values()))
    # When each transition is attempted by the database
    applied = await asyncio.gather(
        *(store.transition(runs[(cur, new, d)].id, new.value, attempt=2 + d) for cur, new, d in cases)
    )
    # Then the database decided exactly as the Python rule does, and stored what it decided
    disagreements = []
    for (cur, new, delta), did in zip(cases, applied, strict=True):
        expected = phases.may_transition(cur, 2, new, 2 + delta)
        got = await store.get_run(runs[(cur, new, delta)].id)
        assert got is not None
        stored = (got.status, got.attempt)
        want = (new.value, 2 + delta) if expected else (cur.value, 2)
        if did != expected or stored != want:
            disagreements.append((cur.value, new.value, delta, did, expected, stored))
    assert disagreements == []
    assert len(cases) == 147


async def test_concurrent_transitions_apply_once(store: stores.Store, open_same: conftest.OpenSame) -> None:
    # Given a running run and two stores (two workers) finishing it at the same moment
    other = await open_same()
    run = run_record("Running")
    await store.upsert_run(run)
    results = await asyncio.gather(
        *(s.transition(run.id, phase, attempt=1, result=phase)
          for s, phase in ((store, "Succeeded"), (other, "Failed")) for _ in range(5))
    )
    # Then exactly one terminal write won: the rest found a terminal phase
    assert sum(results) == 1
    got = await store.get_run(run.id)
    assert got is not None and got.result == got.status


async def test_json_and_timestamps_round_trip(store: stores.Store) -> None:
    naive = datetime.datetime(2031, 5, 6, 7, 8, 9, 10)
    offset = datetime.datetime(2031, 5, 6, 9, 8, 9, 10, tzinfo=datetime.timezone(datetime.timedelta(hours=2)))
    metadata = {"model": "claude", "nested": {"list": [1, 2.5, None, True, {"深": "🚀"}]}, "ünï": "çødé \"q\""}
    run = run_record(
        "Queued", metadata=metadata, usage={"input_tokens": 12, "output_tokens": 2**40},
        created_at=naive, queued_at=offset,
    )
    await store.upsert_run(run)
    got = await store.get_run(run.id)
    assert got is not None
    assert got.metadata == metadata and got.usage == {"input_tokens": 12, "output_tokens": 2**40}
    # Naive times are taken as UTC; every time comes back aware, in UTC
    expected = naive.replace(tzinfo=datetime.UTC)
    assert got.created_at == expected and got.queued_at == expected
    for value in (got.created_at, got.queued_at, got.updated_at):
        assert value is not None and value.utcoffset() == datetime.timedelta(0)
    assert got.started_at is None and got.finished_at is None


async def test_list_runs_filters_and_orders_newest_first(store: stores.Store) -> None:
    namespace = f"ns-{conftest.new_id()[:8]}"
    base_time = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
    runs = [
        run_record("Queued", namespace=namespace, thread_id="shared",
                   created_at=base_time + datetime.timedelta(minutes=i))
        for i in range(4)
    ]
    for r in runs:
        await store.upsert_run(r)
    await store.transition(runs[0].id, "Running", attempt=1)
    assert [r.id for r in await store.list_runs(namespace=namespace)] == [r.id for r in reversed(runs)]
    assert [r.id for r in await store.list_runs(namespace=namespace, status="Running")] == [runs[0].id]
    assert len(await store.list_runs(namespace=namespace, limit=2)) == 2
    assert await store.list_runs(namespace=namespace, thread_id="other") == []
    assert await store.get_run(conftest.new_id()) is None
