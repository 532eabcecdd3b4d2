"""Tokens checked against a JWKS fetched over HTTP (``AGENTRUN_GATEWAY_JWKS_URL``).

A local HTTP server of the test serves the JWKS (and counts how often it is fetched); the
gateway runs on a real uvicorn server with only that URL to verify tokens. test_auth.py
covers the HS256 secret and the JWKS file; here: fetching, caching, refusals, rotation and
retirement of keys, and the cooldown that protects the key server from made-up ``kid``s.
"""

from __future__ import annotations

import http.server
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import jwt.algorithms
import pytest
import uvicorn
from agentrun_gateway import app as gateway_app
from agentrun_gateway import config
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.e2e import harness
from tests.gateway.conftest import Bed


def public_jwk(key: Any, kid: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        jwk, alg = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())), "RS256"
    else:
        jwk, alg = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key())), "ES256"
    jwk.update(kid=kid, alg=alg, use="sig")
    return dict(jwk)


class KeyServer:
    """Serves ``/.well-known/jwks.json`` from :attr:`keys` (kid → private key) and counts fetches."""

    def __init__(self) -> None:
        self.keys: dict[str, Any] = {}
        self.fetches = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if self.path != "/.well-known/jwks.json":
                    self.send_error(404)
                    return
                server.fetches += 1
                body = json.dumps({"keys": [public_jwk(k, kid) for kid, k in server.keys.items()]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, **keys: Any) -> None:
        self.keys = dict(keys)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    server = KeyServer()
    yield server
    server.close()


def serve(gateway: Bed, key_server: KeyServer, **settings: Any) -> Iterator[str]:
    """A gateway that knows no secret and no file: only the JWKS URL."""
    app = gateway_app.create_app(config.GatewaySettings(
        redis_url=gateway.redis_url, database_url=gateway.database_url, kubeconfig=str(gateway.kubeconfig),
        jwks_url=key_server.url, **settings))
    port = harness.free_port()
    web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=web.run, daemon=True)
    thread.start()
    harness.wait_until(lambda: web.started or not thread.is_alive(), 30, "the gateway to listen")
    assert web.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        web.should_exit = True
        thread.join(15)


@pytest.fixture
def url(gateway: Bed, key_server: KeyServer) -> Iterator[str]:
    yield from serve(gateway, key_server, jwks_refresh_cooldown_seconds=0)


@pytest.fixture
def ns(gateway: Bed) -> str:
    name = gateway.namespace()
    gateway.create_run(name, "r1", status={"phase": "Running", "attempt": 1})
    return name


def sign(key: Any, kid: str, namespaces: list[str], **claims: Any) -> str:
    import time

    payload = {"sub": "tester", "aud": "agentrun", "exp": int(time.time()) + 300, "namespaces": namespaces,
               **claims}
    alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def status(url: str, ns: str, token: str) -> int:
    response = httpx.get(f"{url}/v1/namespaces/{ns}/runs", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    return response.status_code


def new_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_rs256_and_es256_tokens_verify_against_the_fetched_jwks_which_is_cached(
    url: str, key_server: KeyServer, ns: str
) -> None:
    rsa_key, ec_key = new_rsa(), ec.generate_private_key(ec.SECP256R1())
    key_server.publish(**{"rsa-1": rsa_key, "ec-1": ec_key})
    for _ in range(3):
        assert status(url, ns, sign(rsa_key, "rsa-1", [ns])) == 200
        assert status(url, ns, sign(ec_key, "ec-1", [ns])) == 200
    assert key_server.fetches == 1  # fetched once, not per request


def test_other_keys_audiences_expired_tokens_and_other_namespaces_are_refused(
    url: str, key_server: KeyServer, ns: str, gateway: Bed
) -> None:
    rsa_key, ec_key = new_rsa(), ec.generate_private_key(ec.SECP256R1())
    key_server.publish(**{"rsa-1": rsa_key, "ec-1": ec_key})
    assert status(url, ns, sign(rsa_key, "rsa-1", [ns])) == 200
    # signed by another key under a published kid, or under a kid nobody published: 401
    assert status(url, ns, sign(new_rsa(), "rsa-1", [ns])) == 401
    assert status(url, ns, sign(ec.generate_private_key(ec.SECP256R1()), "ec-1", [ns])) == 401
    assert status(url, ns, sign(new_rsa(), "rsa-unknown", [ns])) == 401
    # the right key, but for another audience, or expired: 401
    assert status(url, ns, sign(rsa_key, "rsa-1", [ns], aud="someone-else")) == 401
    assert status(url, ns, sign(ec_key, "ec-1", [ns], exp=1_000_000_000)) == 401
    # the right key, another namespace: 403
    other = gateway.namespace()
    assert status(url, other, sign(rsa_key, "rsa-1", [ns])) == 403
    # and the gateway's HS256 secret means nothing here: this gateway trusts only the JWKS
    assert status(url, ns, jwt.encode({"aud": "agentrun", "exp": 4_000_000_000, "namespaces": [ns]},
                                      "any-secret-any-secret-any-secret-00", algorithm="HS256")) == 401


def test_a_rotated_key_is_accepted_and_a_retired_one_refused(url: str, key_server: KeyServer, ns: str) -> None:
    first, second, third = new_rsa(), new_rsa(), new_rsa()
    key_server.publish(**{"rsa-1": first})
    assert status(url, ns, sign(first, "rsa-1", [ns])) == 200
    # When the identity provider publishes a new key, a token with its kid makes the gateway refetch
    key_server.publish(**{"rsa-1": first, "rsa-2": second})
    assert status(url, ns, sign(second, "rsa-2", [ns])) == 200
    assert status(url, ns, sign(first, "rsa-1", [ns])) == 200
    assert key_server.fetches == 2
    # When the first key is retired (and a third appears), the next refetch drops it for good
    key_server.publish(**{"rsa-2": second, "rsa-3": third})
    assert status(url, ns, sign(third, "rsa-3", [ns])) == 200
    assert status(url, ns, sign(first, "rsa-1", [ns])) == 401
    assert status(url, ns, sign(second, "rsa-2", [ns])) == 200


def test_made_up_kids_do_not_make_the_gateway_hammer_the_key_server(
    gateway: Bed, key_server: KeyServer, ns: str
) -> None:
    key = new_rsa()
    key_server.publish(**{"rsa-1": key})
    for base in serve(gateway, key_server, jwks_refresh_cooldown_seconds=600):
        assert status(base, ns, sign(key, "rsa-1", [ns])) == 200
        for _ in range(5):
            assert status(base, ns, sign(new_rsa(), f"kid-{uuid.uuid4().hex}", [ns])) == 401
        assert key_server.fetches == 1
