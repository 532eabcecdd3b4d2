"""Authentication and authorization of the gateway, case by case.

Every refusal is checked against a request that differs only in the token, so a 401 or 403
here can only come from the token.
"""

from __future__ import annotations

import base64
import json
import pathlib
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.gateway.conftest import SECRET, Bed


def _unsigned(namespaces: list[str]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    claims = {"sub": "mallory", "aud": "agentrun", "exp": int(time.time()) + 300, "namespaces": namespaces}
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


async def _get(gateway: Bed, ns: str, headers: dict[str, str], path: str = "/runs") -> tuple[int, dict[str, Any]]:
    async with gateway.client() as client:
        response = await client.get(f"/v1/namespaces/{ns}{path}", headers=headers)
    return response.status_code, response.json()


@pytest.fixture
def ns(gateway: Bed) -> str:
    name = gateway.namespace()
    gateway.create_run(name, "r1", status={"phase": "Running", "attempt": 1})
    return name


@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256"])
async def test_a_valid_token_of_each_algorithm_is_accepted(gateway: Bed, ns: str, alg: str) -> None:
    status, body = await _get(gateway, ns, gateway.keys.auth([ns], alg=alg))
    assert status == 200, body
    assert [r["metadata"]["name"] for r in body["items"]] == ["r1"]


async def test_a_wildcard_token_may_use_every_namespace(gateway: Bed, ns: str) -> None:
    assert (await _get(gateway, ns, gateway.keys.auth(["*"])))[0] == 200


def _refusals(gateway: Bed, ns: str) -> dict[str, tuple[dict[str, str], str]]:
    """Requests that must be refused with 401, and the metric reason each is counted under."""
    keys = gateway.keys
    other_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    other_ec = ec.generate_private_key(ec.SECP256R1())

    def bearer(token: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}"}

    return {
        "no token": ({}, "missing"),
        "not bearer": ({"Authorization": f"Basic {base64.b64encode(b'a:b').decode()}"}, "malformed"),
        "not a JWT": (bearer("not-a-jwt"), "malformed"),
        "alg none (unsigned)": (bearer(_unsigned([ns])), "algorithm"),
        "HS256 with another secret": (keys.auth([ns], key="another-secret-another-secret-another!!"), "signature"),
        "RS256 with another key": (keys.auth([ns], alg="RS256", key=other_rsa), "signature"),
        "ES256 with another key": (keys.auth([ns], alg="ES256", key=other_ec), "signature"),
        "RS256 with an unknown kid": (keys.auth([ns], alg="RS256", key=other_rsa, kid="nope"), "signature"),
        "HS256 signed with the RSA public key (alg confusion)": (
            bearer(_hs256_with_public_key(gateway, ns)), "signature"),
        "expired": (keys.auth([ns], expires_in=-3600), "expired"),
        "another audience": (keys.auth([ns], audience="someone-else"), "audience"),
        "HS384 (not accepted)": (bearer(_hs384(ns)), "algorithm"),
    }


def _hs256_with_public_key(gateway: Bed, ns: str) -> str:
    import hashlib
    import hmac

    from cryptography.hazmat.primitives import serialization

    public = gateway.keys.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)

    def part(value: dict[str, Any]) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")

    claims = {"sub": "mallory", "aud": "agentrun", "exp": int(time.time()) + 300, "namespaces": [ns]}
    signing_input = part({"alg": "HS256", "typ": "JWT"}) + b"." + part(claims)
    signature = base64.urlsafe_b64encode(hmac.new(public, signing_input, hashlib.sha256).digest()).rstrip(b"=")
    return (signing_input + b"." + signature).decode()


def _hs384(ns: str) -> str:
    import jwt

    claims = {"sub": "x", "aud": "agentrun", "exp": int(time.time()) + 300, "namespaces": [ns]}
    return jwt.encode(claims, SECRET, algorithm="HS384")


async def _auth_failures(gateway: Bed) -> dict[str, float]:
    async with gateway.client() as client:
        text = (await client.get("/metrics")).text
    found = {}
    for line in text.splitlines():
        if line.startswith("agentrun_gateway_auth_failures_total{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('reason="')[1].split('"')[0]] = float(value)
    return found


async def test_unsigned_wrongly_signed_expired_and_foreign_tokens_get_401(gateway: Bed, ns: str) -> None:
    for case, (headers, reason) in _refusals(gateway, ns).items():
        before = (await _auth_failures(gateway)).get(reason, 0.0)
        status, body = await _get(gateway, ns, headers)
        assert (status, body["error"]) == (401, "unauthorized"), case
        # Each refusal is counted under its reason; the token never appears in the answer
        assert (await _auth_failures(gateway))[reason] == before + 1, case
        token = headers.get("Authorization", "").partition(" ")[2]
        assert not token or token not in json.dumps(body), case


async def test_a_token_in_the_url_is_refused_even_with_a_valid_header(gateway: Bed, ns: str) -> None:
    token = gateway.keys.token([ns])
    async with gateway.client() as client:
        for param in ("access_token", "token"):
            response = await client.get(f"/v1/namespaces/{ns}/runs", params={param: token},
                                        headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == 401, param
            assert "never in URLs" in response.json()["message"]


async def test_another_namespace_is_forbidden_for_every_endpoint(gateway: Bed, ns: str) -> None:
    other = gateway.namespace()
    gateway.create_run(other, "theirs", status={"phase": "Running", "attempt": 1})
    headers = gateway.keys.auth([ns])  # valid, but for ns only
    async with gateway.client() as client:
        calls = [
            client.get(f"/v1/namespaces/{other}/runs", headers=headers),
            client.get(f"/v1/namespaces/{other}/runs/theirs", headers=headers),
            client.get(f"/v1/namespaces/{other}/runs/theirs/stream", headers=headers),
            client.post(f"/v1/namespaces/{other}/runs/theirs/stop", headers=headers),
            client.post(f"/v1/namespaces/{other}/runs", headers=headers,
                        json={"metadata": {"name": "x"}, "spec": {"input": "hi", "agent": {"model": "scripted"}}}),
            client.get(f"/v1/namespaces/{other}/threads/t1/messages", headers=headers),
        ]
        for call in calls:
            response = await call
            assert response.status_code == 403, response.request.url
            assert response.json()["error"] == "forbidden"
    # and nothing happened there
    assert not (gateway.get_run(other, "theirs").get("spec") or {}).get("stop")
    assert (await _get(gateway, other, gateway.keys.auth([other])))[1]["items"][0]["metadata"]["name"] == "theirs"


async def test_a_token_without_namespaces_may_use_none(gateway: Bed, ns: str) -> None:
    assert (await _get(gateway, ns, gateway.keys.auth(None)))[0] == 403


async def test_health_metrics_and_openapi_need_no_token(gateway: Bed) -> None:
    async with gateway.client() as client:
        assert (await client.get("/healthz")).json() == {"status": "ok"}
        assert (await client.get("/metrics")).status_code == 200
        document = (await client.get("/openapi.json")).json()
    assert document["openapi"].startswith("3.") and "/v1/namespaces/{namespace}/runs/{name}/stream" in document["paths"]


async def test_without_auth_configured_the_gateway_refuses_to_start_unless_told_it_is_insecure(
    gateway: Bed,
) -> None:
    import httpx
    from agentrun_gateway import app as gateway_app
    from agentrun_gateway import config

    with pytest.raises(ValueError, match="AGENTRUN_GATEWAY_JWT_SECRET"):
        gateway_app.create_app(config.GatewaySettings(redis_url=gateway.redis_url))
    ns = gateway.namespace()
    gateway.create_run(ns, "open")
    kubeconfig = pathlib.Path(gateway.kubeconfig)
    insecure = gateway_app.create_app(config.GatewaySettings(
        redis_url=gateway.redis_url, database_url=gateway.database_url, kubeconfig=str(kubeconfig),
        insecure_no_auth=True, host="127.0.0.1"))
    async with insecure.router.lifespan_context(insecure), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=insecure), base_url="http://gateway"
    ) as client:
        response = await client.get(f"/v1/namespaces/{ns}/runs")
        assert response.status_code == 200, response.text
        assert [r["metadata"]["name"] for r in response.json()["items"]] == ["open"]
        # a token, if one is sent (exported for another gateway), is ignored: there is no auth
        # to pass, and a 401 would only get in the way (tests/gateway/test_auth_disabled.py)
        ignored = await client.get(f"/v1/namespaces/{ns}/runs", headers={"Authorization": "Bearer nope"})
        assert ignored.status_code == 200, ignored.text
