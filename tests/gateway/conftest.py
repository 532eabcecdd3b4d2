"""The gateway's test bed: the Kubernetes API emulator, real Redis and PostgreSQL, and the
gateway served by a real uvicorn on a free port (in a thread of the test process).

Tokens are signed here: HS256 with the bed's secret, RS256 and ES256 with keys whose public
halves are in the JWKS file the gateway reads.
"""

from __future__ import annotations

import asyncio
import json
import pathlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import jwt.algorithms
import lightkube
import lightkube.codecs
import lightkube.config.kubeconfig
import lightkube.types
import pytest
import uvicorn
import yaml
from agentrun_gateway import app as gateway_app
from agentrun_gateway import config
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from agentrun import kube, store
from tests.e2e import harness

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECRET = "test-secret-that-is-long-enough-for-hs256-000000"
AUDIENCE = "agentrun"
HEARTBEAT_SECONDS = 0.2
STREAM_BUFFER = 16


class Keys:
    """Signing keys of the bed; the gateway trusts the HS256 secret and the JWKS of rsa/ec."""

    def __init__(self) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())

    def jwks(self) -> dict[str, Any]:
        rsa_jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.rsa.public_key()))
        ec_jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(self.ec.public_key()))
        rsa_jwk.update(kid="rsa-1", alg="RS256", use="sig")
        ec_jwk.update(kid="ec-1", alg="ES256", use="sig")
        return {"keys": [rsa_jwk, ec_jwk]}

    def token(self, namespaces: Any = ("*",), *, alg: str = "HS256", key: Any = None, audience: str = AUDIENCE,
              expires_in: float = 300, kid: str | None = None, **claims: Any) -> str:
        payload = {"sub": "tester", "aud": audience, "exp": int(time.time() + expires_in), **claims}
        if namespaces is not None:
            payload["namespaces"] = list(namespaces) if not isinstance(namespaces, str) else namespaces
        if key is None:
            key = {"HS256": SECRET, "RS256": self.rsa, "ES256": self.ec}[alg]
        headers = {"kid": kid or {"RS256": "rsa-1", "ES256": "ec-1"}[alg]} if alg != "HS256" else None
        return jwt.encode(payload, key, algorithm=alg, headers=headers)

    def auth(self, namespaces: Any = ("*",), **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(namespaces, **kwargs)}"}


class Bed:
    def __init__(self, url: str, api: lightkube.Client, keys: Keys, redis_url: str, database_url: str,
                 app: Any, kubeconfig: pathlib.Path) -> None:
        self.url = url
        self.kubeconfig = kubeconfig
        self.api = api
        self.keys = keys
        self.redis_url = redis_url
        self.database_url = database_url
        self.app = app

    def namespace(self) -> str:
        name = f"gw-{uuid.uuid4().hex[:8]}"
        self.api.create(lightkube.codecs.from_dict(
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))
        return name

    def create_run(self, namespace: str, name: str, *, status: dict[str, Any] | None = None,
                   **spec: Any) -> dict[str, Any]:
        obj = {"apiVersion": "agentrun.io/v1alpha1", "kind": "AgentRun",
               "metadata": {"name": name, "namespace": namespace},
               "spec": {"input": "hi", "agent": {"model": "scripted"}, **spec}}
        created = kube.to_dict(self.api.create(lightkube.codecs.from_dict(obj)))
        if status:
            self.set_status(namespace, name, status)
        return created

    def set_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.api.patch(kube.AgentRun.Status, name, {"status": status}, namespace=namespace,
                       patch_type=lightkube.types.PatchType.MERGE)

    def get_run(self, namespace: str, name: str) -> dict[str, Any]:
        return kube.to_dict(self.api.get(kube.AgentRun, name, namespace=namespace))

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, timeout=httpx.Timeout(10.0), **kwargs)


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys()


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory, redis_url: str, postgres_dsn: str,
            keys: Keys) -> Iterator[Bed]:
    from agentrun_local import emulator

    asyncio.run(store.migrate_url(postgres_dsn))
    crds = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "crds").glob("*.yaml"))]
    server = emulator.EmulatorServer(crds=crds)
    server.start()
    state = tmp_path_factory.mktemp("gateway")
    kubeconfig = server.write_kubeconfig(state / "kubeconfig")
    jwks = state / "jwks.json"
    jwks.write_text(json.dumps(keys.jwks()))
    settings = config.GatewaySettings(
        redis_url=redis_url, database_url=postgres_dsn, kubeconfig=str(kubeconfig), jwt_secret=SECRET,
        jwks_file=str(jwks), heartbeat_seconds=HEARTBEAT_SECONDS, redis_block_ms=100,
        # small, so that a burst overflows a client's buffer and the tests cover the way a
        # client that falls behind leaves the shared reader and reads Redis on its own
        stream_buffer_events=STREAM_BUFFER,
        # the tests of one process share this gateway and one token subject: its rate limit is
        # tested on an app of its own (test_hostile.py)
        rate_limit_per_second=100_000, rate_limit_burst=100_000,
    )
    app = gateway_app.create_app(settings)
    port = harness.free_port()
    web = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=web.run, name="gateway", daemon=True)
    thread.start()
    harness.wait_until(lambda: web.started or not thread.is_alive(), 30, "the gateway to listen")
    assert web.started, "the gateway did not start"
    api = lightkube.Client(config=lightkube.config.kubeconfig.KubeConfig.from_file(kubeconfig), field_manager="test")
    try:
        yield Bed(f"http://127.0.0.1:{port}", api, keys, redis_url, postgres_dsn, app, kubeconfig)
    finally:
        web.should_exit = True
        thread.join(15)
        server.stop()


@pytest.fixture
async def redis(gateway: Bed) -> AsyncIterator[Any]:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(gateway.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def db(gateway: Bed) -> AsyncIterator[store.Store]:
    async with store.open_store(gateway.database_url) as opened:
        yield opened


class Event:
    def __init__(self) -> None:
        self.id: str | None = None
        self.event: str | None = None
        self.data: Any = None

    def __repr__(self) -> str:
        return f"Event(id={self.id!r}, event={self.event!r}, data={self.data!r})"


async def sse_items(response: httpx.Response) -> AsyncIterator[Event | str]:
    """The events (and ``: comment`` lines, as strings) of an SSE response, as they arrive."""
    current = Event()
    has_field = False
    async for line in response.aiter_lines():
        if line == "":
            if has_field:
                yield current
            current, has_field = Event(), False
        elif line.startswith(":"):
            yield line
        else:
            field, _, value = line.partition(":")
            value = value.removeprefix(" ")
            has_field = True
            if field == "id":
                current.id = value
            elif field == "event":
                current.event = value
            elif field == "data":
                current.data = json.loads(value)
