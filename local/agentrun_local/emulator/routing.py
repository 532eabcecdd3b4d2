"""Request routing: URL paths of the Kubernetes API, parsed; kmock requests built from them.

Called by :mod:`.apiserver` for every request. kmock's own parser fails on collection paths
of namespaces (``/api/v1/namespaces``) and knows no PUT, so requests are parsed here and
handed to kmock as :class:`kmock.Request` with the group, version, plural, namespace, name,
subresource and action filled in, which keeps kmock's filtering DSL usable in tests.
"""

from __future__ import annotations

import dataclasses
import json

import aiohttp.web
import kmock


@dataclasses.dataclass(frozen=True)
class Route:
    """A request path, parsed: a discovery document, or a resource (collection/object/subresource)."""

    kind: str  # "root", "api", "apis", "group", "version", "resource", "openapi", "health", "other"
    group: str = ""
    version: str = ""
    plural: str = ""
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    watch: bool = False  # the deprecated /watch/ path prefix
    path: str = ""


def parse_path(path: str) -> Route:
    parts = [part for part in path.split("/") if part]
    if not parts:
        return Route("root", path=path)
    if parts[0] == "api":
        if len(parts) == 1:
            return Route("api", path=path)
        group, version, rest = "", parts[1], parts[2:]
    elif parts[0] == "apis":
        if len(parts) == 1:
            return Route("apis", path=path)
        if len(parts) == 2:
            return Route("group", group=parts[1], path=path)
        group, version, rest = parts[1], parts[2], parts[3:]
    elif parts[0] == "openapi":
        return Route("openapi", path=path)
    elif parts[0] in ("healthz", "livez", "readyz"):
        return Route("health", path=path)
    else:
        return Route("other", path=path)
    if not rest:
        return Route("version", group=group, version=version, path=path)
    watch = False
    if rest[0] == "watch":
        watch, rest = True, rest[1:]
        if not rest:
            return Route("other", path=path)
    namespace: str | None = None
    namespace_subresource = not group and len(rest) == 3 and rest[2] in ("status", "finalize")
    if rest[0] == "namespaces" and len(rest) >= 3 and not namespace_subresource:
        namespace, rest = rest[1], rest[2:]
    return Route("resource", group=group, version=version, plural=rest[0], namespace=namespace,
                  name=rest[1] if len(rest) > 1 else None, subresource="/".join(rest[2:]) or None,
                  watch=watch, path=path)


async def parse_request(raw: aiohttp.web.BaseRequest, *, id: int) -> kmock.Request:
    body = await raw.read()
    try:
        data = json.loads(body) if body else None
    except ValueError:
        data = None
    route = parse_path(raw.path)
    method = raw.method.upper()
    action: kmock.action | None = None
    if route.kind == "resource":
        if method == "GET" and (route.watch or raw.query.get("watch") in ("true", "1")):
            action = kmock.action.WATCH
        elif method == "GET":
            action = kmock.action.FETCH if route.name else kmock.action.LIST
        elif method == "POST" and not route.name:
            action = kmock.action.CREATE
        elif method in ("PATCH", "PUT") and route.name:
            action = kmock.action.UPDATE
        elif method == "DELETE" and route.name:
            action = kmock.action.DELETE
    resource = kmock.resource(route.group, route.version, route.plural) if route.kind == "resource" else None
    return kmock.Request(
        id=id, raw_request=raw, url=raw.url, method=raw.method,
        params=dict(raw.query), headers=dict(raw.headers), cookies=dict(raw.cookies),
        body=body, text=body.decode("utf-8", errors="replace"), data=data,
        action=action, resource=resource, namespace=route.namespace, name=route.name,
        subresource=route.subresource,
    )


def header(request: kmock.Request, name: str) -> str | None:
    for key, value in request.headers.items():
        if key.lower() == name:
            return value
    return None
