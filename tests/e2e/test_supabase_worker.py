"""A worker process that records its runs in Supabase over REST: real kopf, a real Dramatiq worker,
RabbitMQ, Redis, and the PostgREST stand-in on the real PostgreSQL.

The worker is given ``SUPABASE_URL`` and ``AGENTRUN_SUPABASE_KEY`` and no database URL, as the
chart's ``connection.supabase`` does: it picks the Supabase backend by itself, and the run's row,
thread and messages land in the database behind the REST API.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.e2e import harness
from tests.e2e.scenarios import agentrun
from tests.store import postgrest_server

pytestmark = pytest.mark.e2e

KEY = "sb_secret_e2e-service-role-key"


def test_a_worker_configured_with_supabase_records_the_run_through_the_rest_api(
    bed: harness.Bed, operator: Any, namespace: str,
) -> None:
    server = postgrest_server.PostgrestServer(bed.database_url, KEY).start()
    try:
        # Given a worker with Supabase's URL and key, and no database URL
        worker = bed.start_worker(f"agentrun.{namespace}.default", AGENTRUN_DATABASE_URL="",
                                  SUPABASE_URL=server.url, AGENTRUN_SUPABASE_KEY=KEY)
        # When a run is applied
        uid = bed.create(agentrun(namespace, "hello"))["metadata"]["uid"]
        status = bed.wait_phase(namespace, "hello", "Succeeded", "Failed", "Stopped", timeout=60)["status"]
        # Then it succeeded and the database behind the REST API holds its row and conversation
        assert status["phase"] == "Succeeded", status
        row = bed.db_row(uid)
        assert row is not None and (row["status"], row["attempt"], row["worker_instance"]) == (
            "Succeeded", 1, status["workerInstance"])
        assert row["usage"] is not None and row["finished_at"] is not None
        messages = bed.db_messages(status["threadId"])
        assert [m["role"] for m in messages][:1] == ["user"] and len(messages) >= 2
        # And it went over REST: the worker's writes were function calls on the server
        calls = {path.split("?")[0] for method, path in server.requests if method == "POST"}
        assert {"/rest/v1/rpc/agentrun_transition", "/rest/v1/rpc/agentrun_add_message"} <= calls
        output = worker.output()
        assert '"backend": "supabase"' in output or '"backend":"supabase"' in output
        assert KEY not in output
    finally:
        server.stop()
