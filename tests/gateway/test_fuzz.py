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


# Any JSON a client can send, lone surrogates, NULs, huge and non-finite numbers included
_SCALARS = (hypothesis.strategies.none() | hypothesis.strategies.booleans() | hypothesis.strategies.integers()
            | hypothesis.strategies.floats(allow_nan=True, allow_infinity=True)
            | hypothesis.strategies.text(hypothesis.strategies.characters(codec=None), max_size=20))
_JSON = hypothesis.strategies.recursive(
    _SCALARS, lambda inner: (hypothesis.strategies.lists(inner, max_size=4)
                             | hypothesis.strategies.dictionaries(
                                 hypothesis.strategies.text(hypothesis.strategies.characters(codec=None), max_size=8)
                                 | hypothesis.strategies.sampled_from(["input", "agent", "model", "script", "text"]),
                                 inner, max_size=4)),
    max_leaves=30)


def test_no_create_body_makes_the_gateway_fail(gateway: Bed) -> None:
    import json

    import httpx

    ns = gateway.namespace()
    headers = {**gateway.keys.auth([ns]), "content-type": "application/json"}

    @hypothesis.given(spec=_JSON, metadata=_JSON, whole=hypothesis.strategies.booleans())
    @hypothesis.settings(max_examples=150, deadline=None, suppress_health_check=list(hypothesis.HealthCheck),
                         derandomize=True, database=None)
    def call(spec: object, metadata: object, whole: bool) -> None:
        body = spec if whole else {"metadata": {"generateName": "fuzz-", "labels": metadata}, "spec": spec}
        raw = json.dumps(body, ensure_ascii=True, allow_nan=True).encode()
        response = httpx.post(f"{gateway.url}/v1/namespaces/{ns}/runs", content=raw, headers=headers, timeout=10)
        assert response.status_code < 500, ascii(response.text[:300])
        assert response.status_code in (201, 400, 409, 413, 422), ascii(response.text[:300])

    call()
