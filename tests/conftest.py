"""Shared fixtures: the real services every test talks to.

RabbitMQ, Redis and PostgreSQL are used for real. When one does not answer, the session
starts it with ``scripts/ensure-services``; if that fails too the session stops with a
message saying how to start it. Nothing is ever skipped for a missing service.
"""

from __future__ import annotations

import collections
import os
import pathlib
import socket
import subprocess
import uuid
from collections.abc import Iterator

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
POSTGRES_ADMIN_DSN = os.environ.get("TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def _up(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def pytest_sessionstart(session: pytest.Session) -> None:
    if all(_up(port) for port in (5672, 6379, 5432)):
        return
    result = subprocess.run([str(ROOT / "scripts" / "ensure-services")], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.exit(
            "RabbitMQ (5672), Redis (6379) and PostgreSQL (5432) must run on 127.0.0.1 for the tests.\n"
            f"scripts/ensure-services could not start them:\n{result.stderr}",
            returncode=3,
        )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    from tests.e2e import rbac

    # pytest-xdist schedules by node id: two tests sharing one would run as one.
    twice = sorted(nodeid for nodeid, n in collections.Counter(item.nodeid for item in items).items() if n > 1)
    if twice:
        raise pytest.UsageError(f"tests share node ids, so only one of each would run in parallel: {twice}")
    rbac.selected(config, items)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """pytest-xdist: a worker's share of the RBAC audit reaches the controller."""
    from tests.e2e import rbac

    rbac.merge(node.config, getattr(node, "workeroutput", {}))  # type: ignore[attr-defined]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The RBAC audit of the whole run (tests/e2e/rbac.py): in the controller, or in the one process."""
    from tests.e2e import rbac

    config = session.config
    if hasattr(config, "workeroutput"):  # an xdist worker: the controller judges
        config.workeroutput.update(rbac.worker_output(config))
        return
    problems = rbac.verdict(config)
    summary = rbac.summary(config)
    if summary:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("-", "RBAC audit")
            reporter.write_line(summary)
    if problems:
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_sep("=", "RBAC audit: the chart and the recorded API calls disagree", red=True)
            for line in problems:
                reporter.write_line(line)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def redis_url() -> str:
    return REDIS_URL


@pytest.fixture(scope="session")
def amqp_url() -> str:
    return AMQP_URL


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A fresh PostgreSQL database for this session, dropped at the end."""
    import asyncio

    import asyncpg

    name = f"agentrun_test_{uuid.uuid4().hex[:10]}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(POSTGRES_ADMIN_DSN)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    base = POSTGRES_ADMIN_DSN.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def unique() -> str:
    """A short unique suffix for names, queues and namespaces of one test."""
    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="session")
def rabbit_node() -> Iterator[object]:
    """A RabbitMQ node of this session's own (see tests/rabbitnode.py), for tests that stop it."""
    from tests.rabbitnode import RabbitNode

    node = RabbitNode().start()
    try:
        yield node
    finally:
        node.close()
