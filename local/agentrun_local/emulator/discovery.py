"""Discovery documents: ``/api``, ``/apis``, resource lists, ``/version`` and ``/openapi/v3``.

Called by :mod:`.apiserver` for the non-resource GET requests kopf and kubectl make before
anything else. Only the legacy (unaggregated) discovery is served: clients that ask for the
aggregated ``apidiscovery.k8s.io/v2`` form get plain JSON and fall back, as they do against
older servers. ``/openapi/v3`` describes every served group-version with the operations and
the ``fieldValidation`` parameter kubectl looks for (so it leaves validation to the server),
and with the CRD schemas (so ``kubectl explain`` works). ``/openapi/v2`` is not served (404):
kubectl treats that as "no client-side schema" and carries on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from agentrun_local.emulator import resources

SERVER_VERSION = {
    "major": "1",
    "minor": "33",
    "gitVersion": "v1.33.0+agentrun.emulator",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2025-04-23T00:00:00Z",
    "goVersion": "go1.24.2",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def _ordered_versions(types: Iterable[resources.ResourceType], group: str) -> list[str]:
    return sorted({t.version for t in types if t.group == group}, key=resources.version_priority)


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def _group(types: list[resources.ResourceType], group: str) -> dict[str, Any]:
    versions = _ordered_versions(types, group)
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {"name": group, "versions": entries, "preferredVersion": entries[0]}


def api_group_list(types: Iterable[resources.ResourceType]) -> dict[str, Any]:
    types = list(types)
    groups = sorted({t.group for t in types if t.group})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": [_group(types, g) for g in groups]}


def api_group(types: Iterable[resources.ResourceType], group: str) -> dict[str, Any] | None:
    types = list(types)
    if not any(t.group == group for t in types):
        return None
    return {"kind": "APIGroup", "apiVersion": "v1", **_group(types, group)}


def api_resource_list(types: Iterable[resources.ResourceType], group: str, version: str) -> dict[str, Any] | None:
    selected = sorted((t for t in types if t.group == group and t.version == version), key=lambda t: t.plural)
    if not selected:
        return None
    entries: list[dict[str, Any]] = []
    for rtype in selected:
        entry: dict[str, Any] = {
            "name": rtype.plural,
            "singularName": rtype.singular,
            "namespaced": rtype.namespaced,
            "kind": rtype.kind,
            "verbs": list(rtype.verbs),
        }
        if rtype.short_names:
            entry["shortNames"] = list(rtype.short_names)
        if rtype.categories:
            entry["categories"] = list(rtype.categories)
        stored_as = f"{rtype.group}/{rtype.storage_version}/{rtype.kind}"
        entry["storageVersionHash"] = hashlib.sha256(stored_as.encode()).hexdigest()[:11]
        entries.append(entry)
        for sub in sorted(rtype.subresources):
            if sub == "scale":
                entries.append({"name": f"{rtype.plural}/scale", "singularName": "", "namespaced": rtype.namespaced,
                                "group": "autoscaling", "version": "v1", "kind": "Scale",
                                "verbs": ["get", "patch", "update"]})
            elif sub == "finalize":
                entries.append({"name": f"{rtype.plural}/finalize", "singularName": "", "namespaced": rtype.namespaced,
                                "kind": rtype.kind, "verbs": ["update"]})
            else:
                entries.append({"name": f"{rtype.plural}/{sub}", "singularName": "", "namespaced": rtype.namespaced,
                                "kind": rtype.kind, "verbs": ["get", "patch", "update"]})
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": entries,
    }


def root_paths(types: Iterable[resources.ResourceType]) -> dict[str, Any]:
    paths = {"/api", "/api/v1", "/apis", "/version", "/openapi/v3", "/healthz", "/livez", "/readyz"}
    for rtype in types:
        if rtype.group:
            paths.add(f"/apis/{rtype.group}")
            paths.add(f"/apis/{rtype.group}/{rtype.version}")
    return {"paths": sorted(paths)}


_PATCH = "io.k8s.apimachinery.pkg.apis.meta.v1.Patch"
_OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def _schema_name(rtype: resources.ResourceType) -> str:
    reversed_group = ".".join(reversed(rtype.group.split("."))) if rtype.group else "io.k8s.api.core"
    return f"{reversed_group}.{rtype.version}.{rtype.kind}"


def openapi_v3_root(types: Iterable[resources.ResourceType]) -> dict[str, Any]:
    types = list(types)
    paths: dict[str, Any] = {}
    for group, version in sorted({t.group_version for t in types}):
        document = openapi_v3_group_version(types, group, version)
        digest = hashlib.sha512(json.dumps(document, sort_keys=True).encode()).hexdigest().upper()
        paths[_gv_path(group, version)] = {"serverRelativeURL": f"/openapi/v3/{_gv_path(group, version)}?hash={digest}"}
    return {"paths": paths}


def _parameter(name: str, where: str = "query", description: str = "") -> dict[str, Any]:
    return {"name": name, "in": where, "description": description, "schema": {"type": "string", "uniqueItems": True},
            **({"required": True} if where == "path" else {})}


def _operation(rtype: resources.ResourceType, action: str, op_id: str, *, body_types: Iterable[str] = (),
               parameters: Iterable[Mapping[str, Any]] = ()) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{_schema_name(rtype)}"}
    operation: dict[str, Any] = {
        "operationId": op_id,
        "parameters": list(parameters),
        "responses": {"200": {"description": "OK", "content": {"application/json": {"schema": ref}}}},
        "x-kubernetes-action": action,
        "x-kubernetes-group-version-kind": {"group": rtype.group, "version": rtype.version, "kind": rtype.kind},
    }
    body_types = list(body_types)
    if body_types:
        schema = ref if action != "patch" else {"$ref": f"#/components/schemas/{_PATCH}"}
        operation["requestBody"] = {"content": {t: {"schema": schema} for t in body_types}, "required": True}
    return operation


def openapi_v3_group_version(types: Iterable[resources.ResourceType], group: str, version: str) -> dict[str, Any]:
    selected = [t for t in types if t.group == group and t.version == version]
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {
        _PATCH: {"type": "object", "description": "A patch body."},
        _OBJECT_META: {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
    }
    write_params = [_parameter("dryRun"), _parameter("fieldManager"), _parameter("fieldValidation")]
    for rtype in selected:
        prefix = "/" + _gv_path(group, version) + ("/namespaces/{namespace}" if rtype.namespaced else "")
        scope = "Namespaced" if rtype.namespaced else ""
        patch_types = ["application/json-patch+json", "application/merge-patch+json", "application/apply-patch+yaml"]
        path_params = [_parameter("name", "path")] + ([_parameter("namespace", "path")] if rtype.namespaced else [])
        paths[f"{prefix}/{rtype.plural}"] = {
            "get": _operation(rtype, "list", f"list{scope}{rtype.kind}"),
            "post": _operation(rtype, "post", f"create{scope}{rtype.kind}", body_types=["application/json"],
                               parameters=write_params),
            "parameters": path_params[1:],
        }
        paths[f"{prefix}/{rtype.plural}/{{name}}"] = {
            "get": _operation(rtype, "get", f"read{scope}{rtype.kind}"),
            "put": _operation(rtype, "put", f"replace{scope}{rtype.kind}", body_types=["application/json"],
                              parameters=write_params),
            "patch": _operation(rtype, "patch", f"patch{scope}{rtype.kind}", body_types=patch_types,
                                parameters=write_params + [_parameter("force")]),
            "delete": _operation(rtype, "delete", f"delete{scope}{rtype.kind}"),
            "parameters": path_params,
        }
        gvk = [{"group": rtype.group, "version": rtype.version, "kind": rtype.kind}]
        if rtype.schema is not None:
            schema = json.loads(json.dumps(rtype.schema))
            properties = schema.setdefault("properties", {})
            properties.setdefault("apiVersion", {"type": "string"})
            properties.setdefault("kind", {"type": "string"})
            properties["metadata"] = {"allOf": [{"$ref": f"#/components/schemas/{_OBJECT_META}"}]}
        else:
            schema = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
        schema["x-kubernetes-group-version-kind"] = gvk
        schemas[_schema_name(rtype)] = schema
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": SERVER_VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": schemas},
    }
