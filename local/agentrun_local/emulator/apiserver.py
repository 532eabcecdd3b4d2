"""The emulated Kubernetes API server: kmock's ``KubernetesEmulator`` with real API semantics.

:class:`Emulator` is an HTTP handler (served on a TCP port by :mod:`.runner`) that keeps
objects in memory and answers as kube-apiserver does where kopf, lightkube and kubectl can
tell the difference: uids, a global ``resourceVersion`` with optimistic concurrency,
``generation``, the status subresource, the four PATCH flavours, finalizers and deletion,
owner-reference garbage collection, label and field selectors, watches that resume from a
``resourceVersion``, discovery, ``/openapi/v3``, server-side Tables, CRDs that register their
resources, and admission by the CRD's schema. Every request is logged in :attr:`Emulator.audit`.

kmock's own reactions (``emulator['get /x'] << 500``) still take precedence over the
emulation: a test can inject a fault for one call and everything else keeps working. Unlike
plain kmock, such an intercepted write does not change the stored objects.

Used by the test suite and by ``agentrun dev`` (through :class:`.runner.EmulatorServer`).
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import datetime
import json
import random
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

import aiohttp.web
import attrs
import kmock
import multidict
import yaml
from kmock._internal import apps as kmock_apps
from kmock._internal import rendering as kmock_rendering

from agentrun_local.emulator import (
    auditing,
    discovery,
    errors,
    patching,
    protobuf,
    resources,
    routing,
    selectors,
    tables,
    validation,
    watching,
)

Storage = tuple[str, str]
ObjectKey = tuple[str | None, str]

# Fields of metadata that only the server writes; client values are ignored.
_SYSTEM_METADATA = ("uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds",
                    "generation", "selfLink", "resourceVersion")
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # as k8s.io/apiserver's SimpleNameGenerator
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def _get_path(obj: Any, dotted: str) -> Any:
    for part in dotted.strip(".").split("."):
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(part)
    return obj


def _set_path(obj: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.strip(".").split(".")
    for part in parts[:-1]:
        obj = obj.setdefault(part, {})
    obj[parts[-1]] = value


def _as_tuple(items: Iterable[Mapping[str, Any]]) -> tuple[Mapping[str, Any], ...]:
    return tuple(items)


@attrs.define(kw_only=True, eq=False)
class Emulator(kmock.KubernetesEmulator):
    """An in-memory Kubernetes API server; see the module docstring for what it emulates."""

    #: CustomResourceDefinitions installed at start (as if applied before anything else).
    crds: tuple[Mapping[str, Any], ...] = attrs.field(default=(), converter=_as_tuple)
    #: Defaulting and validation of custom resources; default: ``agentrun.schema``.
    admission: validation.Admission | None = None
    #: How many past changes a watch can resume from; older ``resourceVersion`` get 410 Gone.
    watch_cache_size: int = 5_000
    #: Keep only this many requests in ``audit`` and kmock's request log (None: all, for tests).
    history_limit: int | None = None
    #: Seconds between BOOKMARK events on watches that allow them (kube-apiserver: about a minute).
    bookmark_interval: float = 60.0

    #: One record per API request, in arrival order.
    audit: list[auditing.AuditRecord] = attrs.field(factory=list, init=False)

    _types: dict[tuple[str, str, str], resources.ResourceType] = attrs.field(factory=dict, init=False)
    _store: dict[Storage, dict[ObjectKey, dict[str, Any]]] = attrs.field(factory=dict, init=False)
    _uids: dict[str, tuple[Storage, ObjectKey]] = attrs.field(factory=dict, init=False)
    _rv: int = attrs.field(default=0, init=False)
    _history: watching.History = attrs.field(factory=watching.History, init=False)
    # The ?fieldValidation= of the write being served and the warnings it produced. Writes run
    # synchronously on the loop, one at a time, so request-scoped state can live here.
    _field_validation: str = attrs.field(default="Warn", init=False)
    _warnings: list[str] = attrs.field(factory=list, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # kmock's default reactions are replaced by the emulation in _handle(); only the
        # reactions a test adds itself remain in the DSL.
        self._payloads.clear()
        for rtype in resources.BUILTINS:
            self._register(rtype)
        for name in _INITIAL_NAMESPACES:
            self.create_object({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        for crd in self.crds:
            self.create_object(crd)

    # -- public helpers (call them on the emulator's event loop, or before it serves) --------

    @property
    def resource_version(self) -> int:
        """The current global resourceVersion (the last write's)."""
        return self._rv

    @property
    def resource_types(self) -> list[resources.ResourceType]:
        return list(self._types.values())

    def resource_type(self, api_version: str, plural: str) -> resources.ResourceType | None:
        group, _, version = api_version.rpartition("/")
        return self._types.get((group, version, plural))

    def get_object(self, api_version: str, plural: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """A copy of one object as served at ``api_version``, or None."""
        rtype = self._require_type(api_version, plural)
        stored = self._store.get(rtype.storage, {}).get((namespace if rtype.namespaced else None, name))
        return resources.to_served(rtype, stored) if stored is not None else None

    def list_objects(self, api_version: str, plural: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Copies of the objects of a resource (in one namespace or all), sorted by namespace and name."""
        rtype = self._require_type(api_version, plural)
        selected = self._select(rtype, namespace if rtype.namespaced else None, None, [], [])
        return [resources.to_served(rtype, obj) for obj in selected]

    def create_object(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create an object of any served kind, as a POST would; returns the stored object."""
        api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        rtype = next((t for t in self._types.values() if t.api_version == api_version and t.kind == kind), None)
        if rtype is None:
            raise errors.bad_request(f"no resource serves {kind} in {api_version}")
        namespace = (_meta(obj).get("namespace") or "default") if rtype.namespaced else None
        self._field_validation, self._warnings = "Strict", []
        _, created = self._create(rtype, namespace, dict(obj), dry_run=False)
        self._settle()
        return created

    def close(self) -> None:
        """End all watch streams (before the server stops, so that it stops at once)."""
        self._history.close()

    def _require_type(self, api_version: str, plural: str) -> resources.ResourceType:
        rtype = self.resource_type(api_version, plural)
        if rtype is None:
            raise KeyError(f"the emulator serves no {plural} in {api_version}")
        return rtype

    # -- registry ------------------------------------------------------------------------------

    def _register(self, rtype: resources.ResourceType) -> None:
        self._types[rtype.key] = rtype
        self._store.setdefault(rtype.storage, {})
        self.resources[kmock.resource(rtype.group, rtype.version, rtype.plural)] = kmock.ResourceInfo(
            namespaced=rtype.namespaced, kind=rtype.kind, singular=rtype.singular, verbs=rtype.verbs,
            shortnames=rtype.short_names, categories=rtype.categories, subresources=rtype.subresources)

    def _unregister_crd(self, crd_name: str) -> None:
        for key, rtype in list(self._types.items()):
            if rtype.crd_name == crd_name:
                del self._types[key]
                del self.resources[kmock.resource(rtype.group, rtype.version, rtype.plural)]
                if not self._store.get(rtype.storage):
                    self._store.pop(rtype.storage, None)

    def _register_crd(self, crd: Mapping[str, Any]) -> None:
        self._unregister_crd(crd["metadata"]["name"])
        for rtype in resources.from_crd(crd):
            self._register(rtype)

    # -- HTTP ----------------------------------------------------------------------------------

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        """kmock's entry point, with the request parsed here: kmock's own parser fails on
        collection paths of namespaces (``/api/v1/namespaces``) and knows no PUT."""
        await raw_request.read()
        raw_response: aiohttp.web.StreamResponse | None = None
        try:
            if self.limit is not None and len(self._requests) >= self.limit:
                raise kmock_apps.KMockError("Too many requests have been served so far.")
            request = await routing.parse_request(raw_request, id=len(self._requests))
            self._requests.append(request)
            try:
                return await self._handle(request)
            except kmock_rendering.StreamingError as exc:  # a test's streaming reaction failed mid-way
                raw_response = exc.args[0]
                raise (exc.__cause__ or exc) from None
        except Exception as exc:
            if not self._errors:
                raise
            self._errors[-1].append(exc)
            if raw_response is None or not raw_response.prepared:
                return await self._render_error(exc)
            await self._stream_error(exc, raw_response)
            await raw_response.write_eof()
            return raw_response

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        route = routing.parse_path(request.url.path)
        record = self._audit(request, route)
        try:
            response: aiohttp.web.StreamResponse | None = None
            if self._payloads:  # reactions added by a test take precedence
                try:
                    response = await kmock.RawHandler._handle(self, request)
                except NotImplementedError:
                    response = None
            if response is None:
                response = await self._respond(request, route)
            record.code = response.status
            return response
        except Exception:
            record.code = 500
            raise
        finally:
            if self.history_limit is not None:
                keep = max(self.history_limit, 1)
                del self._requests[:-keep]
                del self.audit[:-keep]

    def _audit(self, request: kmock.Request, route: routing.Route) -> auditing.AuditRecord:
        agent = next((v for k, v in request.headers.items() if k.lower() == "user-agent"), "")
        if route.kind == "resource":
            named = route.name is not None
            watch = route.watch or request.params.get("watch") in ("true", "1")
            record = auditing.AuditRecord(
                verb=auditing.verb(request.method.value, named=named, watch=watch),
                group=route.group, version=route.version, resource=route.plural,
                subresource=route.subresource or "", namespace=route.namespace, name=route.name, user_agent=agent)
        else:
            record = auditing.AuditRecord(verb=request.method.value.lower(), path=route.path, user_agent=agent)
        self.audit.append(record)
        return record

    async def _respond(self, request: kmock.Request, route: routing.Route) -> aiohttp.web.StreamResponse:
        try:
            if route.kind == "resource":
                result = self._serve_resource(request, route)
                if isinstance(result, tuple):
                    headers = multidict.CIMultiDict(("Warning", '299 - ' + json.dumps(w)) for w in self._warnings)
                    return _json(result[1], status=result[0], headers=headers)
                return await self._stream(request, result)
            return self._serve_other(request, route)
        except errors.ApiError as exc:
            return _json(exc.status(), status=exc.code)

    def _serve_other(self, request: kmock.Request, route: routing.Route) -> aiohttp.web.StreamResponse:
        if request.method.value not in ("GET", "HEAD"):
            raise errors.method_not_allowed()
        types = self._types.values()
        document: Mapping[str, Any] | None = None
        if route.kind == "root":
            document = discovery.root_paths(types)
        elif route.kind == "api":
            document = discovery.api_versions(f"{request.url.host}:{request.url.port}")
        elif route.kind == "apis":
            document = discovery.api_group_list(types)
        elif route.kind == "group":
            document = discovery.api_group(types, route.group)
        elif route.kind == "version":
            document = discovery.api_resource_list(types, route.group, route.version)
        elif route.kind == "health":
            return aiohttp.web.Response(text="ok")
        elif route.path.rstrip("/") == "/version":
            document = discovery.SERVER_VERSION
        elif route.kind == "openapi":
            parts = [p for p in route.path.split("/") if p]
            if parts[1:] == ["v3"]:
                document = discovery.openapi_v3_root(types)
            elif len(parts) >= 4 and parts[1] == "v3":
                group, version = ("", parts[3]) if parts[2] == "api" else (parts[3], parts[4] if len(parts) > 4 else "")
                if any(t.group == group and t.version == version for t in types):
                    document = discovery.openapi_v3_group_version(types, group, version)
        if document is None:
            raise errors.no_such_resource()
        return _json(document)

    async def _stream(self, request: kmock.Request,
                      events: AsyncIterator[dict[str, Any]]) -> aiohttp.web.StreamResponse:
        raw = request._raw_request
        assert raw is not None  # only None for requests built by hand in kmock's own tests
        response = aiohttp.web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        await response.prepare(raw)
        try:
            async for event in events:
                await response.write(json.dumps(event, separators=(",", ":")).encode() + b"\n")
            await response.write_eof()
        except ConnectionError:
            pass  # the client went away
        return response

    # -- resource requests -----------------------------------------------------------------------

    def _serve_resource(self, request: kmock.Request,
                        route: routing.Route) -> tuple[int, Any] | AsyncIterator[dict[str, Any]]:
        rtype = self._types.get((route.group, route.version, route.plural))
        if rtype is None:
            raise errors.no_such_resource()
        if route.namespace is not None and not rtype.namespaced:
            raise errors.no_such_resource()
        if route.name is not None and rtype.namespaced and route.namespace is None:
            raise errors.no_such_resource()
        if route.subresource is not None and route.subresource not in rtype.subresources:
            raise errors.no_such_resource()
        params = request.params
        method = request.method.value
        dry_run = params.get("dryRun") == "All"
        self._field_validation = params.get("fieldValidation") or "Warn"
        self._warnings = []
        namespace = route.namespace if rtype.namespaced else None
        watching = route.watch or params.get("watch") in ("true", "1")

        if method in ("GET", "HEAD") and watching:
            return self._watch(request, rtype, namespace, route.name)
        if method in ("GET", "HEAD") and route.name is None:
            return 200, self._list(request, rtype, namespace)
        if method in ("GET", "HEAD"):
            assert route.name is not None
            obj = self._get(rtype, namespace, route.name)
            if route.subresource == "scale":
                return 200, self._scale_of(rtype, obj)
            version = tables.wanted(routing.header(request, "accept")) if route.subresource is None else None
            if version is not None:
                return 200, tables.table(rtype, [obj], version=version, include=params.get("includeObject", "Metadata"),
                                         resource_version=_meta(obj).get("resourceVersion"))
            return 200, obj

        if method == "POST" and route.name is None:
            result = self._create(rtype, namespace, self._body(request), dry_run=dry_run)
        elif method == "PUT" and route.name is not None:
            result = self._update(rtype, namespace, route.name, route.subresource, self._body(request), dry_run=dry_run)
        elif method == "PATCH" and route.name is not None:
            result = self._patch(request, rtype, namespace, route.name, route.subresource, dry_run=dry_run)
        elif method == "DELETE" and route.name is not None and route.subresource is None:
            result = self._delete(rtype, namespace, route.name, self._delete_options(request), dry_run=dry_run)
        elif method == "DELETE" and route.name is None:
            result = self._delete_collection(request, rtype, namespace, dry_run=dry_run)
        else:
            raise errors.method_not_allowed()
        self._settle()
        return result

    def _body(self, request: kmock.Request) -> Any:
        content_type = (routing.header(request, "content-type") or "application/json").split(";")[0].strip()
        try:
            if "yaml" in content_type:
                return yaml.safe_load(request.body or b"")
            if content_type == "application/vnd.kubernetes.protobuf":
                return protobuf.decode(request.body)
            return json.loads(request.body or b"null")
        except protobuf.Unsupported as exc:
            raise errors.ApiError(415, "UnsupportedMediaType", str(exc)) from exc
        except (ValueError, yaml.YAMLError) as exc:
            raise errors.bad_request(f"the body of the request could not be decoded: {exc}") from exc

    def _delete_options(self, request: kmock.Request) -> dict[str, Any]:
        options = self._body(request) if request.body.strip() else None
        options = dict(options) if isinstance(options, Mapping) else {}
        for key in ("propagationPolicy", "gracePeriodSeconds", "orphanDependents"):
            if key in request.params:
                options.setdefault(key, request.params[key])
        return options

    def _get(self, rtype: resources.ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        stored = self._store.get(rtype.storage, {}).get((namespace, name))
        if stored is None:
            raise errors.not_found(rtype.plural, rtype.group, name)
        return resources.to_served(rtype, stored)

    # -- selection, lists ------------------------------------------------------------------------

    def _selectors(self, request: kmock.Request, rtype: resources.ResourceType
                   ) -> tuple[list[selectors.Requirement], list[selectors.Requirement]]:
        try:
            labels = selectors.parse_labels(request.params.get("labelSelector"))
            fields = selectors.parse_fields(request.params.get("fieldSelector"))
        except selectors.SelectorError as exc:
            raise errors.bad_request(str(exc)) from exc
        mapped: list[selectors.Requirement] = []
        for req in fields:
            path = resources.field_path(rtype, req.key)
            if path is None:
                raise errors.bad_request(f'field label not supported: {req.key}')
            mapped.append(dataclasses.replace(req, key=path))
        return labels, mapped

    def _matches(self, obj: Mapping[str, Any], namespace: str | None, name: str | None,
                 labels: list[selectors.Requirement], fields: list[selectors.Requirement]) -> bool:
        meta = _meta(obj)
        if namespace is not None and meta.get("namespace") != namespace:
            return False
        if name is not None and meta.get("name") != name:
            return False
        return selectors.match_labels(labels, meta.get("labels")) and selectors.match_fields(fields, obj)

    def _select(self, rtype: resources.ResourceType, namespace: str | None, name: str | None,
                labels: list[selectors.Requirement], fields: list[selectors.Requirement]) -> list[dict[str, Any]]:
        bucket = self._store.get(rtype.storage, {})
        keys = sorted(bucket, key=lambda key: (key[0] or "", key[1]))
        return [bucket[key] for key in keys if self._matches(bucket[key], namespace, name, labels, fields)]

    def _list(self, request: kmock.Request, rtype: resources.ResourceType, namespace: str | None) -> dict[str, Any]:
        labels, fields = self._selectors(request, rtype)
        items = self._select(rtype, namespace, None, labels, fields)
        metadata: dict[str, Any] = {"resourceVersion": str(self._rv)}
        token = request.params.get("continue")
        if token:
            try:
                start = json.loads(base64.urlsafe_b64decode(token.encode()))["start"]
            except (ValueError, KeyError, TypeError) as exc:
                raise errors.bad_request(f"invalid continue token: {exc}") from exc
            items = [obj for obj in items if [_meta(obj).get("namespace") or "", _meta(obj)["name"]] > start]
        limit = int(request.params.get("limit") or 0)
        if limit > 0 and len(items) > limit:
            metadata["remainingItemCount"] = len(items) - limit
            items = items[:limit]
            last = [_meta(items[-1]).get("namespace") or "", _meta(items[-1])["name"]]
            position = json.dumps({"rv": self._rv, "start": last}).encode()
            metadata["continue"] = base64.urlsafe_b64encode(position).decode()
        served = [resources.to_served(rtype, obj) for obj in items]
        version = tables.wanted(routing.header(request, "accept"))
        if version is not None:
            return tables.table(rtype, served, version=version, include=request.params.get("includeObject", "Metadata"),
                                resource_version=str(self._rv),
                                extra_metadata={k: v for k, v in metadata.items() if k != "resourceVersion"})
        return {"kind": rtype.list_kind, "apiVersion": rtype.api_version, "metadata": metadata, "items": served}

    # -- watches ---------------------------------------------------------------------------------

    def _watch(self, request: kmock.Request, rtype: resources.ResourceType, namespace: str | None,
               name: str | None) -> AsyncIterator[dict[str, Any]]:
        labels, fields = self._selectors(request, rtype)  # raise 400 before the stream starts
        params = request.params
        since = params.get("resourceVersion") or ""
        initial: list[dict[str, Any]] | None = None
        if since in ("", "0") or params.get("sendInitialEvents") == "true":
            cursor = self._rv  # the current state first, taken right now
            initial = self._select(rtype, namespace, name, labels, fields)
        else:
            try:
                cursor = int(since)
            except ValueError:
                raise errors.bad_request(f"invalid resource version: {since!r}") from None
        table_version = tables.wanted(routing.header(request, "accept"))
        include = params.get("includeObject", "Metadata")
        first = True

        def render(kind: str, stored: Mapping[str, Any]) -> dict[str, Any]:
            nonlocal first
            obj = resources.to_served(rtype, stored)
            if table_version is not None:  # kubectl get -w: one-row Tables, columns in the first only
                obj = tables.table(rtype, [obj], version=table_version, include=include, headers=first,
                                   resource_version=_meta(obj).get("resourceVersion"))
            first = False
            return {"type": kind, "object": obj}

        def bookmark(rv: int, annotations: Mapping[str, str] | None) -> dict[str, Any]:
            metadata: dict[str, Any] = {"resourceVersion": str(rv)}
            if annotations:
                metadata["annotations"] = dict(annotations)
            return {"type": "BOOKMARK", "object": {"kind": rtype.kind, "apiVersion": rtype.api_version,
                                                   "metadata": metadata}}

        return watching.stream(self._history, watching.Watch(
            storage=rtype.storage,
            matches=lambda obj: self._matches(obj, namespace, name, labels, fields),
            render=render,
            bookmark=bookmark,
            cursor=cursor,
            initial=initial,
            # Without timeoutSeconds, kube-apiserver ends a watch after 30 to 60 minutes.
            timeout=float(params["timeoutSeconds"]) if params.get("timeoutSeconds") else random.uniform(1800, 3600),
            bookmarks=params.get("allowWatchBookmarks") == "true",
            initial_end=params.get("sendInitialEvents") == "true",
            bookmark_interval=self.bookmark_interval,
        ))

    # -- writes ----------------------------------------------------------------------------------

    def _commit(self, storage: Storage, new: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        meta = _meta(new)
        key = (meta.get("namespace"), meta["name"])
        self._rv += 1
        meta["resourceVersion"] = str(self._rv)
        self._store.setdefault(storage, {})[key] = new
        self._uids[meta["uid"]] = (storage, key)
        event = watching.Event(self._rv, storage, "ADDED" if old is None else "MODIFIED", new, old)
        self._history.record(event, keep=self.watch_cache_size)
        self._mirror(storage, key, new, new.get("apiVersion", ""))
        return new

    def _remove(self, storage: Storage, key: ObjectKey, final: dict[str, Any] | None = None) -> dict[str, Any]:
        """Delete for good: a DELETED event at a new resourceVersion, then the consequences."""
        old = self._store[storage].pop(key)
        final = copy.deepcopy(final if final is not None else old)
        self._uids.pop(_meta(old).get("uid", ""), None)
        self._rv += 1
        final["metadata"]["resourceVersion"] = str(self._rv)
        self._history.record(watching.Event(self._rv, storage, "DELETED", final, old), keep=self.watch_cache_size)
        self._mirror(storage, key, None, old.get("apiVersion", ""))
        if storage == resources.CRDS:
            self._unregister_crd(key[1])
        self._collect_garbage(_meta(old).get("uid", ""))
        return final

    def _mirror(self, storage: Storage, key: ObjectKey, obj: dict[str, Any] | None, api_version: str) -> None:
        """Keep kmock's ``objects`` view on the current state (no history: bounded memory)."""
        group, _, version = api_version.rpartition("/")
        mirror_key = (kmock.resource(group, version, storage[1]), key[0], key[1])
        if obj is not None:
            self.objects[mirror_key] = copy.deepcopy(obj)
        elif mirror_key in self.objects:
            del self.objects[mirror_key]

    def _create(self, rtype: resources.ResourceType, namespace: str | None, body: Any, *,
                dry_run: bool) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        obj = copy.deepcopy(body)
        if obj.get("apiVersion") not in (None, rtype.api_version):
            raise errors.bad_request(f"the API version in the data ({obj.get('apiVersion')}) does not match "
                                     f"the expected API version ({rtype.api_version})")
        if obj.get("kind") not in (None, rtype.kind):
            raise errors.bad_request(f"the kind in the data ({obj.get('kind')}) does not match "
                                     f"the expected kind ({rtype.kind})")
        if not isinstance(obj.get("metadata", {}), dict):
            raise errors.bad_request("metadata must be an object")
        meta = obj.setdefault("metadata", {})
        if rtype.namespaced:
            if meta.get("namespace") not in (None, "", namespace):
                raise errors.bad_request("the namespace of the provided object does not match the namespace "
                                         "sent on the request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        bucket = self._store.setdefault(rtype.storage, {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise errors.invalid(rtype.kind, rtype.group, "", [
                    ("metadata.name", "Required value: name or generateName is required", "FieldValueRequired")])
            for _ in range(10):
                meta["name"] = meta["generateName"] + "".join(random.choice(_NAME_ALPHABET) for _ in range(5))
                if (namespace, meta["name"]) not in bucket:
                    break
        name = meta["name"]
        self._check_name(rtype, name)
        if (namespace, name) in bucket:
            raise errors.already_exists(rtype.plural, rtype.group, name)
        if rtype.namespaced:
            assert namespace is not None
            ns = self._store[resources.NAMESPACES].get((None, namespace))
            if ns is None:
                raise errors.not_found("namespaces", "", namespace)
            if _meta(ns).get("deletionTimestamp"):
                raise errors.forbidden(f'{rtype.plural} "{name}" is forbidden: unable to create new content in '
                                       f"namespace {namespace} because it is being terminated")
        if rtype.is_custom:
            crd = self._store[resources.CRDS].get((None, rtype.crd_name or ""))
            if crd is not None and _meta(crd).get("deletionTimestamp"):
                raise errors.method_not_allowed("create not allowed while custom resource definition is terminating")
        for field in _SYSTEM_METADATA:
            meta.pop(field, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["generation"] = 1
        if not meta.get("finalizers"):
            meta.pop("finalizers", None)
        if "status" in rtype.subresources:
            obj.pop("status", None)
        obj["apiVersion"], obj["kind"] = rtype.api_version, rtype.kind
        obj = self._system_defaults(rtype, obj)
        obj = self._admit(rtype, obj, None, None)
        if dry_run:
            return 201, obj
        stored = self._commit(rtype.storage, resources.to_stored(rtype, obj), None)
        if rtype.storage == resources.CRDS:
            self._register_crd(stored)
        return 201, resources.to_served(rtype, stored)

    def _check_name(self, rtype: resources.ResourceType, name: str) -> None:
        if rtype.storage == resources.NAMESPACES:
            ok, what = len(name) <= 63 and bool(_DNS_LABEL.match(name)), "RFC 1123 label"
        else:
            ok, what = len(name) <= 253 and bool(_DNS_SUBDOMAIN.match(name)), "RFC 1123 subdomain"
        if not ok:
            raise errors.invalid(rtype.kind, rtype.group, name, [(
                "metadata.name", f'Invalid value: "{name}": a lowercase {what} must consist of lower case '
                                 "alphanumeric characters, '-' or '.', and must start and end with an alphanumeric "
                                 "character", "FieldValueInvalid")])

    def _system_defaults(self, rtype: resources.ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        """What the built-in defaulting and strategies of kube-apiserver add (namespaces, secrets, CRDs)."""
        if rtype.storage == resources.NAMESPACES:
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj.setdefault("status", {})["phase"] = "Terminating" if _meta(obj).get("deletionTimestamp") else "Active"
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
        elif rtype.storage == ("", "secrets") and not obj.get("type"):
            obj["type"] = "Opaque"
        elif rtype.storage == resources.CRDS:
            problems = resources.crd_problems(obj)
            if problems:
                raise errors.invalid(rtype.kind, rtype.group, _meta(obj).get("name", ""),
                                     [(field, message, "FieldValueInvalid") for field, message in problems])
            finalizers = obj["metadata"].setdefault("finalizers", [])
            if resources.CRD_CLEANUP_FINALIZER not in finalizers and not obj["metadata"].get("deletionTimestamp"):
                finalizers.append(resources.CRD_CLEANUP_FINALIZER)
            resources.complete_crd(obj)
        return obj

    def _admit(self, rtype: resources.ResourceType, obj: dict[str, Any], old: dict[str, Any] | None,
               subresource: str | None) -> dict[str, Any]:
        if not rtype.is_custom:
            return _fold_string_data(obj) if rtype.group == "" and rtype.plural == "secrets" else obj
        crd = self._store[resources.CRDS].get((None, rtype.crd_name or ""))
        if crd is None:
            return obj
        if self.admission is None:
            # The stored CRD is passed as it is: its compiled schema is cached by identity, and
            # neither argument is modified (defaulting works on a copy).
            defaulted, problems = validation.schema_admission(crd, obj, old)
        else:
            defaulted, problems = self.admission(copy.deepcopy(crd), copy.deepcopy(obj))
        unknown = [p for p in problems if validation.is_unknown_field(p)]
        problems = [p for p in problems if not validation.is_unknown_field(p)]
        if unknown and self._field_validation == "Strict":
            raise errors.bad_request(
                f'{rtype.kind} in version "{rtype.version}" cannot be handled as a {rtype.kind}: strict decoding '
                f"error: {', '.join(p.message for p in unknown)}")
        if subresource == "status":
            result = copy.deepcopy(obj)
            if "status" in defaulted:
                result["status"] = defaulted["status"]
        else:
            result = defaulted
            if "status" in rtype.subresources and old is not None:
                result.pop("status", None)
                if "status" in obj:
                    result["status"] = obj["status"]
        result["metadata"] = obj["metadata"]
        for problem in unknown:  # pruned, as kube-apiserver prunes unknown fields
            validation.remove_at(result, problem.field)
            if self._field_validation != "Ignore":
                self._warnings.append(problem.message)
        kept = validation.ratchet(problems, old, result)
        if kept:
            raise validation.invalid(rtype.kind, rtype.group, _meta(obj).get("name", ""), kept)
        return result

    def _update(self, rtype: resources.ResourceType, namespace: str | None, name: str, subresource: str | None,
                body: Any, *, dry_run: bool) -> tuple[int, dict[str, Any]]:
        stored = self._store.get(rtype.storage, {}).get((namespace, name))
        if stored is None:
            raise errors.not_found(rtype.plural, rtype.group, name)
        if not isinstance(body, dict):
            raise errors.bad_request("the body of the request must be a JSON object")
        body_name = _meta(body).get("name")
        if body_name is not None and body_name != name:
            raise errors.bad_request(f"the name of the object ({body_name}) does not match the name on the URL "
                                     f"({name})")
        if subresource == "scale":
            return self._write_scale(rtype, stored, body, dry_run=dry_run)
        return self._replace(rtype, stored, copy.deepcopy(body), subresource, require_rv=True, dry_run=dry_run)

    def _patch(self, request: kmock.Request, rtype: resources.ResourceType, namespace: str | None, name: str,
               subresource: str | None, *, dry_run: bool) -> tuple[int, dict[str, Any]]:
        content_type = (routing.header(request, "content-type") or "").split(";")[0].strip()
        if content_type not in patching.TYPES:
            raise errors.unsupported_media_type(content_type)
        if content_type == patching.STRATEGIC and rtype.is_custom:
            raise errors.unsupported_media_type(content_type)  # as kube-apiserver: no SMP for custom resources
        body = self._body(request)
        stored = self._store.get(rtype.storage, {}).get((namespace, name))
        if content_type == patching.APPLY:
            if not request.params.get("fieldManager"):
                raise errors.invalid("PatchOptions", "meta.k8s.io", "", [
                    ("fieldManager", "Required value: is required for apply patch", "FieldValueRequired")])
            if stored is None and subresource is None:
                if not isinstance(body, dict) or not isinstance(body.get("metadata", {}), dict):
                    raise errors.bad_request("the body of the request must be a JSON object")
                if body.setdefault("metadata", {}).setdefault("name", name) != name:
                    raise errors.bad_request(f"the name of the object ({body['metadata']['name']}) does not match "
                                             f"the name on the URL ({name})")
                return self._create(rtype, namespace, body, dry_run=dry_run)
        if stored is None:
            raise errors.not_found(rtype.plural, rtype.group, name)
        current = self._scale_of(rtype, resources.to_served(rtype, stored)) if subresource == "scale" \
            else resources.to_served(rtype, stored)
        try:
            if content_type == patching.MERGE:
                proposed = patching.merge(current, body)
            elif content_type == patching.JSON:
                proposed = patching.json_patch(current, body)
            elif content_type == patching.STRATEGIC:
                proposed = patching.strategic(current, body)
            else:
                proposed = (patching.merge if rtype.is_custom else patching.strategic)(current, body)
        except patching.PatchError as exc:
            raise errors.unprocessable(str(exc)) from exc
        if subresource == "scale":
            return self._write_scale(rtype, stored, proposed, dry_run=dry_run)
        return self._replace(rtype, stored, proposed, subresource, require_rv=False, dry_run=dry_run)

    def _replace(self, rtype: resources.ResourceType, stored: dict[str, Any], proposed: Any, subresource: str | None,
                 *, require_rv: bool, dry_run: bool) -> tuple[int, dict[str, Any]]:
        """The common tail of PUT and PATCH: concurrency, subresource rules, admission, generation."""
        current = resources.to_served(rtype, stored)
        current_meta = current["metadata"]
        name, namespace = current_meta["name"], current_meta.get("namespace")
        if not isinstance(proposed, dict) or not isinstance(proposed.get("metadata", {}), dict):
            raise errors.bad_request("the object must be a JSON object with an object as metadata")
        meta = proposed.setdefault("metadata", {})
        rv = meta.get("resourceVersion")
        if rv in (None, ""):
            if require_rv and not rtype.unconditional_update:
                raise errors.invalid(rtype.kind, rtype.group, name, [
                    ("metadata.resourceVersion", "Invalid value: 0x0: must be specified for an update",
                     "FieldValueInvalid")])
        elif str(rv) != current_meta["resourceVersion"]:
            raise errors.conflict(rtype.plural, rtype.group, name)
        moved = namespace is not None and meta.get("namespace") not in (None, namespace)
        if meta.get("name") not in (None, name) or moved:
            raise errors.bad_request("the name and namespace of an object cannot be changed")

        if subresource == "status":
            result = copy.deepcopy(current)
            if "status" in proposed:
                result["status"] = proposed["status"]
            else:
                result.pop("status", None)
        elif subresource == "finalize":
            result = copy.deepcopy(current)
            result.setdefault("spec", {})["finalizers"] = (proposed.get("spec") or {}).get("finalizers") or []
        else:
            result = proposed
            for field in _SYSTEM_METADATA:
                if field in current_meta:
                    meta[field] = current_meta[field]
                else:
                    meta.pop(field, None)
            meta["name"] = name
            if namespace is not None:
                meta["namespace"] = namespace
            if "status" in rtype.subresources and subresource is None:
                if "status" in current:
                    result["status"] = copy.deepcopy(current["status"])
                else:
                    result.pop("status", None)
            if current_meta.get("deletionTimestamp"):
                added = [f for f in meta.get("finalizers") or [] if f not in (current_meta.get("finalizers") or [])]
                if added:
                    raise errors.invalid(rtype.kind, rtype.group, name, [(
                        "metadata.finalizers", "Forbidden: no new finalizers can be added if the object is being "
                        f"deleted, found new finalizers {json.dumps(added)}", "FieldValueForbidden")])
            if not meta.get("finalizers"):
                meta.pop("finalizers", None)
        result["apiVersion"], result["kind"] = rtype.api_version, rtype.kind
        result = self._system_defaults(rtype, result)
        result = self._admit(rtype, result, current, subresource)

        meta = result["metadata"]
        if self._spec_of(rtype, result) != self._spec_of(rtype, current):
            meta["generation"] = int(current_meta.get("generation") or 0) + 1
        if result == current:
            return 200, current  # a no-op write changes nothing, not even the resourceVersion
        if dry_run:
            return 200, result
        new = resources.to_stored(rtype, result)
        finished = bool(meta.get("deletionTimestamp")) and not meta.get("finalizers") \
            and rtype.storage != resources.NAMESPACES
        if finished:
            return 200, resources.to_served(rtype, self._remove(rtype.storage, (namespace, name), new))
        committed = self._commit(rtype.storage, new, stored)
        if rtype.storage == resources.CRDS and not meta.get("deletionTimestamp"):
            self._register_crd(committed)
        return 200, resources.to_served(rtype, committed)

    def _spec_of(self, rtype: resources.ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
        """What ``metadata.generation`` counts changes of: all but metadata (and the status subresource)."""
        skipped = {"metadata", "status"} if "status" in rtype.subresources else {"metadata"}
        return {k: v for k, v in obj.items() if k not in skipped and k not in ("apiVersion", "kind")}

    # -- scale subresource -----------------------------------------------------------------------

    def _scale_paths(self, rtype: resources.ResourceType) -> tuple[str, str, str | None]:
        if rtype.scale is not None:
            return (rtype.scale.get("specReplicasPath", ".spec.replicas"),
                    rtype.scale.get("statusReplicasPath", ".status.replicas"), rtype.scale.get("labelSelectorPath"))
        return ".spec.replicas", ".status.replicas", None

    def _scale_of(self, rtype: resources.ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
        spec_path, status_path, selector_path = self._scale_paths(rtype)
        meta = _meta(obj)
        selector = _get_path(obj, selector_path) if selector_path else None
        if selector is None and rtype.storage == ("apps", "deployments"):
            match = _get_path(obj, ".spec.selector.matchLabels") or {}
            selector = ",".join(f"{k}={v}" for k, v in sorted(match.items()))
        status: dict[str, Any] = {"replicas": _get_path(obj, status_path) or 0}
        if selector:
            status["selector"] = selector
        return {
            "kind": "Scale", "apiVersion": "autoscaling/v1",
            "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                         if k in meta},
            "spec": {"replicas": _get_path(obj, spec_path) or 0},
            "status": status,
        }

    def _write_scale(self, rtype: resources.ResourceType, stored: dict[str, Any], scale: Any, *,
                     dry_run: bool) -> tuple[int, dict[str, Any]]:
        if not isinstance(scale, dict):
            raise errors.bad_request("the body of the request must be a Scale object")
        replicas = (scale.get("spec") or {}).get("replicas")
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise errors.invalid("Scale", "autoscaling", _meta(stored)["name"], [
                ("spec.replicas", f"Invalid value: {json.dumps(replicas)}: must be greater than or equal to 0",
                 "FieldValueInvalid")])
        proposed = resources.to_served(rtype, stored)
        _set_path(proposed, self._scale_paths(rtype)[0], replicas)
        proposed["metadata"]["resourceVersion"] = _meta(scale).get("resourceVersion")
        _, result = self._replace(rtype, stored, proposed, None, require_rv=False, dry_run=dry_run)
        return 200, self._scale_of(rtype, result)

    # -- deletion, garbage collection ------------------------------------------------------------

    def _delete(self, rtype: resources.ResourceType, namespace: str | None, name: str, options: Mapping[str, Any],
                *, dry_run: bool) -> tuple[int, dict[str, Any]]:
        stored = self._store.get(rtype.storage, {}).get((namespace, name))
        if stored is None:
            raise errors.not_found(rtype.plural, rtype.group, name)
        meta = _meta(stored)
        preconditions = options.get("preconditions") or {}
        if preconditions.get("uid") not in (None, meta.get("uid")):
            raise errors.conflict(rtype.plural, rtype.group, name,
                                  f"Precondition failed: UID in precondition: {preconditions['uid']}, "
                                  f"UID in object meta: {meta.get('uid')}")
        if preconditions.get("resourceVersion") not in (None, meta.get("resourceVersion")):
            raise errors.conflict(rtype.plural, rtype.group, name,
                                  f"Precondition failed: ResourceVersion in precondition: "
                                  f"{preconditions['resourceVersion']}, ResourceVersion in object meta: "
                                  f"{meta.get('resourceVersion')}")
        if dry_run:
            return 200, resources.to_served(rtype, stored)
        policy = options.get("propagationPolicy") or (
            "Orphan" if str(options.get("orphanDependents")).lower() == "true" else "Background")
        if policy == "Orphan":
            self._orphan(meta.get("uid", ""))
        result = self._delete_stored(rtype.storage, (namespace, name))
        return 200, resources.to_served(rtype, result)

    def _delete_stored(self, storage: Storage, key: ObjectKey) -> dict[str, Any]:
        """Delete as the API does: mark it if finalizers (or contents) hold it, else remove it."""
        stored = self._store[storage][key]
        meta = _meta(stored)
        if meta.get("deletionTimestamp"):
            return stored
        if meta.get("finalizers") or storage == resources.NAMESPACES:
            marked = copy.deepcopy(stored)
            marked["metadata"]["deletionTimestamp"] = _now()
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            marked["metadata"]["generation"] = int(meta.get("generation") or 0) + 1
            if storage == resources.NAMESPACES:
                marked.setdefault("status", {})["phase"] = "Terminating"
            if storage == resources.CRDS:
                marked.setdefault("status", {}).setdefault("conditions", []).append({
                    "type": "Terminating", "status": "True", "reason": "InstanceDeletionInProgress",
                    "message": "CustomResource deletion is in progress", "lastTransitionTime": _now()})
            self._commit(storage, marked, stored)
            if storage == resources.NAMESPACES:
                for other, bucket in list(self._store.items()):
                    for child_key in [k for k in bucket if k[0] == key[1]]:
                        if child_key in bucket:
                            self._delete_stored(other, child_key)
            if storage == resources.CRDS:
                instances = (stored["spec"]["group"], stored["spec"]["names"]["plural"])
                for child_key in list(self._store.get(instances, {})):
                    if child_key in self._store[instances]:
                        self._delete_stored(instances, child_key)
            return marked
        return self._remove(storage, key)

    def _delete_collection(self, request: kmock.Request, rtype: resources.ResourceType, namespace: str | None, *,
                           dry_run: bool) -> tuple[int, dict[str, Any]]:
        labels, fields = self._selectors(request, rtype)
        options = self._delete_options(request)
        items = []
        for stored in self._select(rtype, namespace, None, labels, fields):
            meta = _meta(stored)
            _, result = self._delete(rtype, meta.get("namespace"), meta["name"], options, dry_run=dry_run)
            items.append(result)
        return 200, {"kind": rtype.list_kind, "apiVersion": rtype.api_version,
                     "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    def _orphan(self, owner_uid: str) -> None:
        for storage, bucket in list(self._store.items()):
            for obj in list(bucket.values()):
                refs = _meta(obj).get("ownerReferences") or []
                if any(ref.get("uid") == owner_uid for ref in refs):
                    new = copy.deepcopy(obj)
                    new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != owner_uid]
                    if not new["metadata"]["ownerReferences"]:
                        del new["metadata"]["ownerReferences"]
                    self._commit(storage, new, obj)

    def _collect_garbage(self, owner_uid: str) -> None:
        """Background propagation: delete dependents once none of their owners exists."""
        if not owner_uid:
            return
        for storage, bucket in list(self._store.items()):
            for key, obj in list(bucket.items()):
                refs = _meta(obj).get("ownerReferences") or []
                if key not in bucket or not any(ref.get("uid") == owner_uid for ref in refs):
                    continue
                if not any(ref.get("uid") in self._uids for ref in refs):
                    self._delete_stored(storage, key)

    def _settle(self) -> None:
        """Finish terminating namespaces and CRDs whose contents are gone (their controllers' job)."""
        progress = True
        while progress:
            progress = False
            watched = (self._store[resources.NAMESPACES], self._store[resources.CRDS])
            terminating = any(_meta(obj).get("deletionTimestamp") for bucket in watched for obj in bucket.values())
            if not terminating:
                return
            namespaced_keys = {key[0] for bucket in self._store.values() for key in bucket if key[0] is not None}
            for key, ns in list(self._store[resources.NAMESPACES].items()):
                meta = _meta(ns)
                if meta.get("deletionTimestamp") and not meta.get("finalizers") and key[1] not in namespaced_keys:
                    self._remove(resources.NAMESPACES, key)
                    progress = True
            for key, crd in list(self._store[resources.CRDS].items()):
                meta = _meta(crd)
                finalizers = meta.get("finalizers") or []
                if not meta.get("deletionTimestamp") or resources.CRD_CLEANUP_FINALIZER not in finalizers:
                    continue
                storage = (crd["spec"]["group"], crd["spec"]["names"]["plural"])
                if self._store.get(storage):
                    continue
                new = copy.deepcopy(crd)
                new["metadata"]["finalizers"] = [f for f in finalizers if f != resources.CRD_CLEANUP_FINALIZER]
                if new["metadata"]["finalizers"]:
                    self._commit(resources.CRDS, new, crd)
                else:
                    del new["metadata"]["finalizers"]
                    self._remove(resources.CRDS, key, new)
                progress = True


def _json(payload: Any, status: int = 200, headers: multidict.CIMultiDict[str] | None = None) -> aiohttp.web.Response:
    """A JSON response with exactly ``Content-Type: application/json``, as kube-apiserver sends
    it: lightkube only recognises error Status bodies under that exact header (no charset)."""
    response = aiohttp.web.Response(body=json.dumps(payload).encode(), status=status, headers=headers)
    response.headers["Content-Type"] = "application/json"
    return response


def _fold_string_data(secret: dict[str, Any]) -> dict[str, Any]:
    """A Secret's write-only ``stringData`` merged into base64 ``data``, as the API server stores it."""
    string_data = secret.pop("stringData", None)
    if string_data:
        import base64

        data = dict(secret.get("data") or {})
        data.update({k: base64.b64encode(str(v).encode()).decode() for k, v in string_data.items()})
        secret["data"] = data
    return secret
