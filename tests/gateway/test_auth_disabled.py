"""A gateway without authentication (``agentrun dev``'s) ignores the tokens people have exported.

A token exported for another gateway used to be verified anyway and refused with 401, although
no token was needed at all.
"""

from __future__ import annotations

import asyncio

import structlog.testing
from agentrun_gateway import auth


def test_a_gateway_without_auth_ignores_any_token_and_says_so_once() -> None:
    verifier = auth.Verifier(audience=["agentrun"], allow_anonymous=True)
    with structlog.testing.capture_logs() as logs:
        for token in ("not-even-a-jwt", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"):
            principal = asyncio.run(verifier.authenticate({"authorization": f"Bearer {token}"}, []))
            assert principal == auth.ANONYMOUS
    assert [e["event"] for e in logs] == ["gateway.token_ignored"]


def test_a_gateway_with_auth_still_refuses_a_bad_token() -> None:
    verifier = auth.Verifier(secret="s" * 32, audience=["agentrun"])
    try:
        asyncio.run(verifier.authenticate({"authorization": "Bearer not-even-a-jwt"}, []))
    except auth.AuthError as exc:
        assert exc.status == 401
    else:
        raise AssertionError("a bad token was accepted")
