"""No log line of a worker or the operator carries a broker message's body.

Real kopf, a real ``dramatiq`` worker process (at debug verbosity, so Dramatiq's own
``Received message …`` lines are on), RabbitMQ and the API emulator. The worker's database is
a port where nothing listens, so every delivery of the run fails and Dramatiq retries it: the
path on which Dramatiq logged the whole message (``Failed to process message
execute_run({…'input': …})``). The run's input and system prompt carry a canary that must
appear in no log line, while the message id (what the lines say instead) does.
"""

from __future__ import annotations

import uuid

import pytest

from agentrun import message
from tests.e2e import harness

pytestmark = pytest.mark.e2e


def test_a_failing_delivery_logs_the_message_id_never_its_body(bed: harness.Bed, operator: object,
                                                                  namespace: str) -> None:
    # Given a worker whose every delivery fails (its database does not answer), at debug level
    canary = f"canary-{uuid.uuid4().hex}"
    env = bed.env(AGENTRUN_QUEUE=message.queue_name(namespace, "default"),
                  AGENTRUN_DATABASE_URL=f"postgresql://postgres@127.0.0.1:{harness.free_port()}/nothing",
                  AGENTRUN_DATABASE_RETRY_SECONDS="0.5",
                  AGENTRUN_METRICS_PORT=str(harness.free_port()))
    worker = harness.Proc("worker", [str(harness.BIN / "dramatiq"), "agentrun_worker.actors", "--processes", "1",
                                     "--threads", "2", "--verbose"], env, bed.log_dir).start()
    bed.procs.append(worker)  # stopped with the namespace
    harness.wait_until(lambda: "ready for action" in worker.output() or not worker.alive(), 30, "the worker")
    assert worker.alive(), worker.output()

    # When a run with the canary in its input and system prompt is applied
    bed.create({"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
                "metadata": {"name": "secretive", "namespace": namespace},
                "spec": {"input": f"the password is {canary}",
                         "agent": {"model": "scripted", "systemPrompt": f"never say {canary}"}}})

    # Then its message is delivered, fails and is retried twice
    harness.wait_until(lambda: worker.output().count("Retrying message") >= 2, 60, "two retries", interval=0.2)
    run = bed.get_run(namespace, "secretive")
    message_id = message.RunMessage(
        uid=run["metadata"]["uid"], namespace=namespace, name="secretive", generation=1, attempt=1, thread_id="t",
        queued_at="", spec={}).message_id()
    output = worker.output()
    assert "Failed to process message" in output and "Received message" in output, output[-3000:]
    # and every line names the message by its id, none holds its body
    assert message_id in output, output[-3000:]
    leaks = [line[:300] for line in output.splitlines() + operator.proc.output().splitlines()  # type: ignore[attr-defined]
             if canary in line]
    assert leaks == []
