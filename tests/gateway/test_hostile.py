"""Hostile traffic: every kind of bad input is refused with a 4xx naming the rule, never a 5xx.

Given the gateway of the bed (real uvicorn, the API emulator, real Redis and PostgreSQL),
when a body breaks one rule of the create-run endpoint (size, nesting, encoding, NULs and
lone surrogates in each string field of the AgentRun schema, numbers JSON cannot carry into
Kubernetes, wrong types, a forged ``agentrun.io/created-by``), then the answer is the status
the protocol names for it, in its JSON error shape, saying which limit or field, and nothing
is created. The start-up refusals (short HS256 secret, no authentication off loopback) and the
rate limit have tests of their own at the end.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from agentrun_gateway import admission

from agentrun import schema
from tests.gateway.conftest import Bed

LIMIT = admission.MAX_BODY_BYTES
DEPTH = admission.MAX_DEPTH


def _body(name: str = "x", **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "spec": {"input": "hi", "agent": {"model": "scripted"}, **spec}}


def _encoded(body: Any) -> bytes:
    """JSON as a hostile client sends it: lone surrogates as ``\\ud800`` escapes (valid JSON)."""
    return json.dumps(body, ensure_ascii=True).encode()


async def _post(gateway: Bed, ns: str, content: bytes, **headers: str) -> httpx.Response:
    async with gateway.client(headers={**gateway.keys.auth([ns]), "content-type": "application/json",
                                       **headers}) as client:
        return await client.post(f"/v1/namespaces/{ns}/runs", content=content)


def _padded(size: int) -> bytes:
    """A create-run body of exactly ``size`` bytes (its input is too long for the schema)."""
    head = _encoded(_body(input=""))
    filler = size - len(head)
    assert filler > 0
    raw = _encoded(_body(input="a" * filler))
    assert len(raw) == size
    return raw


def _nested(depth: int) -> bytes:
    """A body whose deepest value sits ``depth`` containers down (the body itself is 1)."""
    inner = "[" * (depth - 2) + "]" * (depth - 2)  # metadata/spec are level 2
    return b'{"metadata": {"name": "x"}, "spec": {"input": "hi", "deep": ' + inner.encode() + b"}}"


# -- every string field of an AgentRun ------------------------------------------------------------


def _string_fields() -> Iterator[tuple[Any, ...]]:
    """The path of every string in the AgentRun schema (a list as its item 0, a map as key ``k``)."""
    crd = schema.crd_for("AgentRun")
    version = next(v for v in crd["spec"]["versions"] if v["name"] == schema.DEFAULT_VERSION)

    def walk(node: dict[str, Any], path: tuple[Any, ...]) -> Iterator[tuple[Any, ...]]:
        kind = node.get("type")
        if kind == "string":
            yield path
        elif kind == "object":
            for name, child in (node.get("properties") or {}).items():
                yield from walk(child, (*path, name))
            if isinstance(node.get("additionalProperties"), dict):
                yield from walk(node["additionalProperties"], (*path, "k"))
        elif kind == "array":
            yield from walk(node["items"], (*path, 0))

    yield from walk(version["schema"]["openAPIV3Schema"]["properties"]["spec"], ("spec",))
    yield from [("apiVersion",), ("kind",), ("metadata", "name"), ("metadata", "generateName"),
                ("metadata", "labels", "k"), ("metadata", "annotations", "k")]


def _render(path: tuple[Any, ...]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text


def _with(path: tuple[Any, ...], value: str) -> dict[str, Any]:
    body: dict[str, Any] = _body()
    node: Any = body
    for part, after in zip(path, (*path[1:], None), strict=True):
        if after is None:
            if isinstance(part, int):
                node.append(value)
            else:
                node[part] = value
            break
        child: Any = [] if isinstance(after, int) else {}
        if isinstance(part, int):
            node.append(child)
        else:
            node[part] = node.get(part) if isinstance(node.get(part), type(child)) else child
            child = node[part]
        node = child
    return body


STRING_FIELDS = sorted(_string_fields())
# As JSON escapes, spliced into the encoded body: no test value holds the bad text itself
# (pytest-xdist cannot send a report with a lone surrogate in it back to the controller).
BAD_TEXT = {"nul": (b"a\\u0000b", "NUL"), "lone-surrogate": (b"a\\ud800b", "lone surrogate")}
PLACEHOLDER = "@@bad@@"


@pytest.mark.parametrize("field", STRING_FIELDS, ids=_render)
@pytest.mark.parametrize("kind", sorted(BAD_TEXT))
async def test_a_nul_or_lone_surrogate_in_any_string_field_is_a_400_naming_it(
    gateway: Bed, field: tuple[Any, ...], kind: str,
) -> None:
    ns = gateway.namespace()
    text, words = BAD_TEXT[kind]
    response = await _post(gateway, ns, _encoded(_with(field, PLACEHOLDER)).replace(PLACEHOLDER.encode(), text))
    assert response.status_code == 400, response.text
    answer = response.json()
    assert answer["error"] == "bad_request" and answer["field"] == _render(field), answer
    assert _render(field) in answer["message"] and words in answer["message"], answer


async def test_a_nul_or_lone_surrogate_in_a_key_is_a_400_naming_where() -> None:
    surrogate = b'{"metadata": {"name": "x", "labels": {"a\\ud800": "v"}}, "spec": {}}'
    refused = admission.check(surrogate, "ns", creator="tester", max_depth=DEPTH)
    assert isinstance(refused, admission.Refused)
    assert refused.status == 400 and refused.field == "metadata.labels" and "lone surrogate" in refused.message
    refused = admission.check(b'{"spec": {"a\\u0000": 1}}', "ns", creator="tester", max_depth=DEPTH)
    assert isinstance(refused, admission.Refused)
    assert refused.status == 400 and refused.field == "spec" and "NUL" in refused.message
    json.dumps(refused.answer(), ensure_ascii=False).encode()  # the answer itself is valid UTF-8


# -- size, nesting, encoding, numbers, types ----------------------------------------------------------

CASES: dict[str, tuple[bytes, int, str]] = {
    # name: (body, status, what the message must say)
    "size at the limit": (_padded(LIMIT), 422, "spec.input: Too long"),
    "size one byte over": (_padded(LIMIT + 1), 413, f"{LIMIT} bytes"),
    "size far over": (_padded(4 * LIMIT), 413, f"{LIMIT} bytes"),
    "nesting at the limit": (_nested(DEPTH), 422, 'unknown field "spec.deep"'),
    "nesting one over": (_nested(DEPTH + 1), 400, f"nested deeper than {DEPTH}"),
    "nesting far over": (_nested(100_000), 400, f"nested deeper than {DEPTH}"),
    "invalid UTF-8": (b'{"metadata": {"name": "x"}, "spec": {"input": "\xff\xfe"}}', 400, "UTF-8"),
    "raw NUL byte": (b'{"metadata": {"name": "x"}, "spec": {"input": "a\x00"}}', 400, "JSON"),
    "not JSON": (b"{", 400, "JSON"),
    "empty": (b"", 400, "JSON"),
    "a list": (b"[]", 400, "JSON AgentRun object"),
    "a string": (b'"run"', 400, "JSON AgentRun object"),
    "null": (b"null", 400, "JSON AgentRun object"),
    "float overflow": (b'{"metadata": {"name": "x"}, "spec": {"timeoutSeconds": 1e999}}', 400,
                       "spec.timeoutSeconds"),
    "NaN": (b'{"metadata": {"name": "x"}, "spec": {"timeoutSeconds": NaN}}', 400, "spec.timeoutSeconds"),
    "-Infinity": (b'{"metadata": {"name": "x"}, "spec": {"maxAttempts": -Infinity}}', 400, "spec.maxAttempts"),
    "int beyond int64": (b'{"metadata": {"name": "x"}, "spec": {"timeoutSeconds": 9223372036854775808}}', 400,
                         "spec.timeoutSeconds"),
    "int of 5,000 digits": (b'{"metadata": {"name": "x"}, "spec": {"timeoutSeconds": ' + b"9" * 5000 + b"}}", 400,
                            "spec.timeoutSeconds"),
    "wrong type of input": (_encoded(_body(input=5)), 422, "spec.input"),
    "wrong type of metadata": (_encoded({**_body(), "metadata": []}), 422, "metadata"),
    "wrong type of labels": (_encoded({**_body(), "metadata": {"name": "x", "labels": {"a": 1}}}), 422,
                             "metadata.labels"),
    "20,000 unknown fields": (_encoded({**_body(), "spec": {f"k{i}": 1 for i in range(20_000)}}), 422,
                              "more errors"),  # the first 100 listed, the rest counted
    "50,000 copies of a tool": (_encoded(_body(agent={"model": "scripted", "tools": ["a"] * 50_000})), 422,
                                "spec.agent.tools: Too many: 50000"),
    "forged created-by": (_encoded({**_body(), "metadata": {"name": "x", "annotations": {
        "agentrun.io/created-by": "admin"}}}), 422, "metadata.annotations[agentrun.io/created-by]"),
}


@pytest.mark.parametrize("case", sorted(CASES))
async def test_hostile_bodies_are_refused_with_the_status_and_rule(gateway: Bed, case: str) -> None:
    content, status, words = CASES[case]
    ns = gateway.namespace()
    response = await _post(gateway, ns, content)
    assert response.status_code == status, (case, response.status_code, response.text[:500])
    answer = response.json()
    assert set(answer) >= {"error", "message"}, answer
    assert words in answer["message"], (case, answer["message"][:500])
    async with gateway.client(headers=gateway.keys.auth([ns])) as client:
        assert (await client.get(f"/v1/namespaces/{ns}/runs")).json()["items"] == []


async def test_a_declared_length_over_the_limit_is_refused_before_the_body_is_read(gateway: Bed) -> None:
    ns = gateway.namespace()
    host, port = gateway.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    token = gateway.keys.token([ns])
    writer.write(f"POST /v1/namespaces/{ns}/runs HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n"
                 f"Content-Type: application/json\r\nContent-Length: {1024 ** 3}\r\n\r\n{{".encode())
    await writer.drain()
    # the answer comes without the gigabyte the header announces
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 413 "), head

    async def endless() -> Any:
        yield b'{"spec": {"input": "'
        for _ in range(1000):
            yield b"a" * 65536  # 64 MiB if it were all read
        yield b'"}}'

    async with gateway.client(headers={**gateway.keys.auth([ns]), "content-type": "application/json"}) as client:
        chunked = await client.post(f"/v1/namespaces/{ns}/runs", content=endless())
    assert chunked.status_code == 413 and f"{LIMIT} bytes" in chunked.json()["message"]


async def test_a_created_run_records_the_token_subject(gateway: Bed) -> None:
    ns = gateway.namespace()
    name = f"mine-{uuid.uuid4().hex[:6]}"
    async with gateway.client(headers=gateway.keys.auth([ns], sub="alice@example.com")) as client:
        response = await client.post(f"/v1/namespaces/{ns}/runs", json=_body(name))
    assert response.status_code == 201, response.text
    annotations = gateway.get_run(ns, name)["metadata"]["annotations"]
    assert annotations[admission.CREATED_BY] == "alice@example.com"


# -- start-up refusals --------------------------------------------------------------------------------


@pytest.mark.parametrize("secret", ["x", "a" * 31, "é" * 15 + "a"])  # 1, 31 and 31 bytes
def test_an_hs256_secret_shorter_than_32_bytes_is_refused_at_start(gateway: Bed, secret: str) -> None:
    from agentrun_gateway import app as gateway_app
    from agentrun_gateway import config

    with pytest.raises(ValueError, match=r"AGENTRUN_GATEWAY_JWT_SECRET.*at least 32 bytes"):
        gateway_app.create_app(config.GatewaySettings(redis_url=gateway.redis_url, jwt_secret=secret))
    gateway_app.create_app(config.GatewaySettings(redis_url=gateway.redis_url, jwt_secret="é" * 16))  # 32 bytes


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "gateway.example.com", "localhost"])
def test_no_auth_is_refused_unless_the_gateway_binds_loopback(gateway: Bed, host: str) -> None:
    from agentrun_gateway import app as gateway_app
    from agentrun_gateway import config

    with pytest.raises(ValueError, match=r"AGENTRUN_GATEWAY_INSECURE_NO_AUTH.*127\.0\.0\.1 or ::1"):
        gateway_app.create_app(config.GatewaySettings(redis_url=gateway.redis_url, insecure_no_auth=True, host=host))
    for loopback in ("127.0.0.1", "::1", "127.0.0.2"):
        gateway_app.create_app(config.GatewaySettings(redis_url=gateway.redis_url, insecure_no_auth=True,
                                                      host=loopback))


# -- rate limit ------------------------------------------------------------------------------------------


async def test_a_burst_over_the_rate_limit_gets_429_with_retry_after(gateway: Bed) -> None:
    from agentrun_gateway import app as gateway_app
    from agentrun_gateway import config

    from tests.gateway.conftest import SECRET

    app = gateway_app.create_app(config.GatewaySettings(
        redis_url=gateway.redis_url, database_url=gateway.database_url, kubeconfig=str(gateway.kubeconfig),
        jwt_secret=SECRET, rate_limit_per_second=0.5, rate_limit_burst=5, rate_limit_create_cost=2))
    ns = gateway.namespace()
    async with app.router.lifespan_context(app), httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        mine, other = gateway.keys.auth([ns], sub="burst"), gateway.keys.auth([ns], sub="someone-else")
        statuses = [(await client.get(f"/v1/namespaces/{ns}/runs", headers=mine)).status_code for _ in range(5)]
        assert statuses == [200] * 5
        refused = await client.get(f"/v1/namespaces/{ns}/runs", headers=mine)
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        answer = refused.json()
        assert answer["error"] == "rate_limited" and "0.5 requests/s" in answer["message"], answer
        # another subject has a bucket of its own; a create costs 2 of its 5
        assert (await client.get(f"/v1/namespaces/{ns}/runs", headers=other)).status_code == 200
        created = await client.post(f"/v1/namespaces/{ns}/runs", headers=other, json=_body("one"))
        assert created.status_code == 201, created.text
        again = await client.post(f"/v1/namespaces/{ns}/runs", headers=other, json=_body("two"))
        assert again.status_code == 201, again.text
        assert (await client.post(f"/v1/namespaces/{ns}/runs", headers=other, json=_body("three"))).status_code == 429
        # health, metrics and the page are never limited
        assert [(await client.get("/healthz")).status_code for _ in range(20)] == [200] * 20


# -- the event loop -----------------------------------------------------------------------------------


async def test_healthz_answers_while_a_costly_body_is_being_checked(gateway: Bed) -> None:
    # Given the costliest body found: 1,000 script steps with six tool calls each (≈ 0.6 s of CEL
    # rules), which only a CEL rule refuses (input and inputParts both set)
    steps = [{"text": "x" * 20, "toolCalls": [{"name": "t", "arguments": "{}"}] * 6}] * 1000
    body = _encoded(_body(inputParts=[{"type": "text", "text": "hi"}], agent={"model": "scripted",
                                                                              "script": steps}))
    assert len(body) <= LIMIT
    ns = gateway.namespace()
    async with gateway.client(headers={**gateway.keys.auth([ns]), "content-type": "application/json"}) as client:
        # When it is posted, and /healthz is asked while it is checked
        post = asyncio.create_task(client.post(f"/v1/namespaces/{ns}/runs", content=body))
        await asyncio.sleep(0.15)
        health = await client.get("/healthz")
        # Then /healthz is answered before the body's check ends (on the event loop it waited for it)
        assert health.status_code == 200 and not post.done()
        refused = await post
    assert refused.status_code == 422 and "exactly one of input" in refused.json()["message"]
