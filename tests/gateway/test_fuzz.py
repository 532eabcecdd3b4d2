"""schemathesis fuzzes the gateway from its own OpenAPI document: no request may cause a 5xx.

Requests carry a valid all-namespaces token, so the fuzzing reaches the handlers behind the
authentication (without one every answer would be a 401 and prove little).
"""

from __future__ import annotations

import hypothesis
import schemathesis
import schemathesis.checks

from agentrun.gateway import openapi
from tests.gateway.conftest import Bed

schema = schemathesis.openapi.from_dict(openapi.document())


@schema.parametrize()
@hypothesis.settings(max_examples=30, deadline=None, suppress_health_check=list(hypothesis.HealthCheck),
                     derandomize=True)
def test_no_request_makes_the_gateway_fail(case: schemathesis.Case, gateway: Bed) -> None:  # type: ignore[type-arg]
    headers: dict[str, str] = {**dict(case.headers or {}), **gateway.keys.auth(["*"])}
    response = case.call(base_url=gateway.url, headers=headers, timeout=10)
    assert response.status_code < 500, (case.as_curl_command(), response.text)
