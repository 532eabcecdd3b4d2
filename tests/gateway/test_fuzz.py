"""schemathesis fuzzes the gateway from its own OpenAPI document: no request may cause a 5xx.

Requests carry a valid all-namespaces token, so the fuzzing reaches the handlers behind the
authentication (without one every answer would be a 401 and prove little).
"""

from __future__ import annotations

import hypothesis
import pytest
import schemathesis
from agentrun_gateway import openapi

from tests.gateway.conftest import Bed

schema = schemathesis.openapi.from_dict(openapi.document())
# One test per operation, parametrized by pytest itself: each gets a node id of its own
# ("…[POST /v1/namespaces/{namespace}/runs]"), which pytest-xdist needs to schedule them all.
OPERATIONS = {op.label: op for op in (result.ok() for result in schema.get_all_operations())}


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_no_request_makes_the_gateway_fail(operation: str, gateway: Bed) -> None:
    @hypothesis.given(case=OPERATIONS[operation].as_strategy())
    @hypothesis.settings(max_examples=30, deadline=None, suppress_health_check=list(hypothesis.HealthCheck),
                         derandomize=True, database=None)
    def call(case: schemathesis.Case) -> None:  # type: ignore[type-arg]
        headers: dict[str, str] = {**dict(case.headers or {}), **gateway.keys.auth(["*"])}
        response = case.call(base_url=gateway.url, headers=headers, timeout=10)
        assert response.status_code < 500, (case.as_curl_command(), response.text)

    call()
