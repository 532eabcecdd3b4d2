"""The end-to-end bed: emulator in-process; operator and workers as real subprocesses."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tests.e2e import harness, rbac, scenarios


@pytest.fixture(scope="session")
def bed(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, amqp_url: str, redis_url: str,
        postgres_dsn: str) -> Iterator[harness.Bed]:
    with harness.emulated_bed(tmp_path_factory.mktemp("bed"), amqp_url=amqp_url, redis_url=redis_url,
                              database_url=postgres_dsn) as bed:
        try:
            yield bed
        finally:
            # every API call of this session's operator and workers, for the RBAC audit at the end of the run
            rbac.record(request.config, rbac.calls(bed.emulator))


class Operator:
    """The session's one operator process, which a test may kill and start again."""

    def __init__(self, bed: harness.Bed) -> None:
        self.bed = bed
        self.proc = bed.start_operator()

    def restart_after_kill(self) -> harness.Proc:
        self.proc.kill()
        self.proc = self.bed.start_operator()
        return self.proc

    @contextlib.contextmanager
    def down(self, **env: str) -> Iterator[None]:
        """Killed for the block, then started again with ``env``."""
        self.proc.kill()
        try:
            yield
        finally:
            self.proc = self.bed.start_operator(**env)


@pytest.fixture(scope="session")
def operator(bed: harness.Bed) -> Operator:
    return Operator(bed)


@pytest.fixture
def namespace(bed: harness.Bed) -> Iterator[str]:
    """A namespace of one test, with a WorkerPool "default" whose queue is this test's own."""
    name = bed.new_namespace()
    started = len(bed.procs)
    yield name
    for proc in bed.procs[started:]:
        if proc.name == "worker":
            proc.stop()
    bed.delete_queues(f"agentrun.{name}.default")


@pytest.fixture(scope="module")
def fast_operator(bed: harness.Bed, operator: Operator) -> Iterator[harness.Proc]:
    """The session's operator replaced by one that scans every second (restored afterwards)."""
    operator.proc.stop()
    operator.proc = bed.start_operator(**scenarios.OPERATOR_ENV)
    try:
        yield operator.proc
    finally:
        operator.proc.stop()
        operator.proc = bed.start_operator()
