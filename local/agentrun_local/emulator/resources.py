"""What the emulated API server serves: resource types, the built-in ones, and CRD translation.

A :class:`ResourceType` is one (group, version, plural) the server answers for, with everything
discovery, tables, admission and the storage need to know about it. :mod:`.apiserver` keeps
a registry of them, seeded with :data:`BUILTINS` and grown by :func:`from_crd` whenever a
CustomResourceDefinition is created or updated. Objects are stored once per (group, plural)
at the storage version and converted here to the version a client asked for.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Mapping
from typing import Any

DEFAULT_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")

CRD_CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"


@dataclasses.dataclass(frozen=True)
class ResourceType:
    """One served resource: ``group/version/plural`` and everything the server knows about it."""

    group: str
    version: str
    plural: str
    kind: str
    singular: str = ""
    list_kind: str = ""
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = DEFAULT_VERBS
    subresources: frozenset[str] = frozenset()
    #: CRD-style ``additionalPrinterColumns`` (name, type, jsonPath, priority, description).
    printer_columns: tuple[Mapping[str, Any], ...] = ()
    #: The version's ``openAPIV3Schema`` (custom resources only).
    schema: Mapping[str, Any] | None = None
    #: The version objects are stored at; reads at another version only change ``apiVersion``.
    storage_version: str = ""
    #: Where the objects live: ``(group, plural)``; events.k8s.io events share core events.
    storage: tuple[str, str] = ("", "")
    #: The ``metadata.name`` of the CRD this type comes from; None for built-ins.
    crd_name: str | None = None
    #: The CRD's ``subresources.scale`` (``specReplicasPath``, ``statusReplicasPath``, ...).
    scale: Mapping[str, Any] | None = None
    #: Field-selector labels besides ``metadata.name``/``metadata.namespace``, as dotted paths.
    field_labels: tuple[str, ...] = ()
    #: Whether a PUT without ``metadata.resourceVersion`` is accepted (false for custom resources).
    unconditional_update: bool = True

    def __post_init__(self) -> None:
        if not self.singular:
            object.__setattr__(self, "singular", self.kind.lower())
        if not self.list_kind:
            object.__setattr__(self, "list_kind", self.kind + "List")
        if not self.storage_version:
            object.__setattr__(self, "storage_version", self.version)
        if self.storage == ("", ""):
            object.__setattr__(self, "storage", (self.group, self.plural))

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def group_version(self) -> tuple[str, str]:
        return self.group, self.version

    @property
    def key(self) -> tuple[str, str, str]:
        return self.group, self.version, self.plural

    @property
    def is_custom(self) -> bool:
        return self.crd_name is not None


def _builtin(group: str, version: str, plural: str, kind: str, *, namespaced: bool = True,
             short_names: tuple[str, ...] = (), categories: tuple[str, ...] = (),
             subresources: tuple[str, ...] = (), columns: tuple[Mapping[str, Any], ...] = (),
             field_labels: tuple[str, ...] = (), storage: tuple[str, str] = ("", "")) -> ResourceType:
    return ResourceType(group=group, version=version, plural=plural, kind=kind, namespaced=namespaced,
                        short_names=short_names, categories=categories, subresources=frozenset(subresources),
                        printer_columns=columns, field_labels=field_labels, storage=storage)


_EVENT_FIELDS = ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
                 "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
                 "reason", "reportingComponent", "source", "type")
_EVENT_COLUMNS: tuple[Mapping[str, Any], ...] = (
    {"name": "Type", "type": "string", "jsonPath": ".type"},
    {"name": "Reason", "type": "string", "jsonPath": ".reason"},
    {"name": "Object", "type": "string", "jsonPath": ".involvedObject.name"},
    {"name": "Message", "type": "string", "jsonPath": ".message"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
)

#: Registered when the server starts. kopf's peering resources are CRDs on a real cluster;
#: here they are built in so that kopf without ``--standalone`` finds them.
BUILTINS: tuple[ResourceType, ...] = (
    _builtin("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",),
             subresources=("status", "finalize"), field_labels=("status.phase",)),
    _builtin("", "v1", "pods", "Pod", short_names=("po",), categories=("all",), subresources=("status",),
             field_labels=("spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName",
                           "status.phase", "status.podIP", "status.nominatedNodeName")),
    _builtin("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    _builtin("", "v1", "secrets", "Secret", field_labels=("type",)),
    _builtin("", "v1", "events", "Event", short_names=("ev",), columns=_EVENT_COLUMNS, field_labels=_EVENT_FIELDS),
    _builtin("", "v1", "services", "Service", short_names=("svc",), categories=("all",), subresources=("status",)),
    _builtin("", "v1", "serviceaccounts", "ServiceAccount", short_names=("sa",)),
    _builtin("apps", "v1", "deployments", "Deployment", short_names=("deploy",), categories=("all",),
             subresources=("status", "scale")),
    _builtin("events.k8s.io", "v1", "events", "Event", short_names=("ev",), storage=("", "events"),
             columns=_EVENT_COLUMNS, field_labels=_EVENT_FIELDS),
    _builtin("coordination.k8s.io", "v1", "leases", "Lease"),
    _builtin("autoscaling", "v2", "horizontalpodautoscalers", "HorizontalPodAutoscaler", short_names=("hpa",),
             categories=("all",), subresources=("status",)),
    _builtin("apiextensions.k8s.io", "v1", "customresourcedefinitions", "CustomResourceDefinition",
             namespaced=False, short_names=("crd", "crds"), categories=("api-extensions",), subresources=("status",)),
    _builtin("kopf.dev", "v1", "kopfpeerings", "KopfPeering"),
    _builtin("kopf.dev", "v1", "clusterkopfpeerings", "ClusterKopfPeering", namespaced=False),
)

NAMESPACES = ("", "namespaces")
CRDS = ("apiextensions.k8s.io", "customresourcedefinitions")


def crd_problems(crd: Mapping[str, Any]) -> list[tuple[str, str]]:
    """What kube-apiserver would refuse in a CRD, as ``(field, message)``; empty when acceptable."""
    problems: list[tuple[str, str]] = []
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group, plural, kind = spec.get("group"), names.get("plural"), names.get("kind")
    for field, value in (("spec.group", group), ("spec.names.plural", plural), ("spec.names.kind", kind)):
        if not value:
            problems.append((field, "Required value"))
    if spec.get("scope") not in ("Namespaced", "Cluster"):
        problems.append(("spec.scope", f'Unsupported value: "{spec.get("scope")}": '
                                       'supported values: "Cluster", "Namespaced"'))
    versions = spec.get("versions") or []
    if not versions:
        problems.append(("spec.versions",
                         "Invalid value: null: must have exactly one version marked as storage version"))
    elif sum(1 for v in versions if v.get("storage")) != 1:
        problems.append(("spec.versions", "Invalid value: must have exactly one version marked as storage version"))
    for index, version in enumerate(versions):
        if not (version.get("schema") or {}).get("openAPIV3Schema"):
            problems.append((f"spec.versions[{index}].schema.openAPIV3Schema", "Required value: schemas are required"))
    name = (crd.get("metadata") or {}).get("name")
    if group and plural and name != f"{plural}.{group}":
        problems.append(("metadata.name", f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group'))
    return problems


def complete_crd(crd: dict[str, Any]) -> dict[str, Any]:
    """Fill the names the API server defaults and the status a real cluster reports once established."""
    names = crd["spec"]["names"]
    names.setdefault("singular", names["kind"].lower())
    names.setdefault("listKind", names["kind"] + "List")
    storage = next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))
    status = crd.setdefault("status", {})
    status["acceptedNames"] = copy.deepcopy(names)
    stored = status.setdefault("storedVersions", [])
    if storage not in stored:
        stored.append(storage)
    now = (crd.get("metadata") or {}).get("creationTimestamp")
    status["conditions"] = [
        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
         "message": "no conflicts found", "lastTransitionTime": now},
        {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
         "message": "the initial names have been accepted", "lastTransitionTime": now},
    ]
    return crd


def from_crd(crd: Mapping[str, Any]) -> list[ResourceType]:
    """The resource types a CRD serves: one per served version."""
    spec = crd["spec"]
    names = spec["names"]
    storage_version = next(v["name"] for v in spec["versions"] if v.get("storage"))
    result: list[ResourceType] = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        subresources = version.get("subresources") or {}
        result.append(ResourceType(
            group=spec["group"],
            version=version["name"],
            plural=names["plural"],
            kind=names["kind"],
            singular=names.get("singular") or names["kind"].lower(),
            list_kind=names.get("listKind") or names["kind"] + "List",
            namespaced=spec.get("scope", "Namespaced") == "Namespaced",
            short_names=tuple(names.get("shortNames") or ()),
            categories=tuple(names.get("categories") or ()),
            subresources=frozenset(key for key in ("status", "scale") if key in subresources),
            printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
            schema=(version.get("schema") or {}).get("openAPIV3Schema"),
            storage_version=storage_version,
            crd_name=crd["metadata"]["name"],
            scale=subresources.get("scale"),
            field_labels=tuple(f["jsonPath"].lstrip(".") for f in version.get("selectableFields") or ()),
            unconditional_update=False,
        ))
    return result


_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int, str]:
    """Sort key putting versions in Kubernetes priority order: v2, v1, v1beta2, v1beta1, v1alpha1, then others."""
    match = _VERSION.match(version)
    if not match:
        return (3, 0, 0, version)
    major, stage, minor = int(match[1]), match[2], int(match[3] or 0)
    rank = {None: 0, "beta": 1, "alpha": 2}[stage]
    return (rank, -major, -minor, version)


# events.k8s.io/v1 Event <-> core/v1 Event: the same stored objects under two schemas.
_EVENT_RENAMES = (
    ("involvedObject", "regarding"),
    ("message", "note"),
    ("source", "deprecatedSource"),
    ("firstTimestamp", "deprecatedFirstTimestamp"),
    ("lastTimestamp", "deprecatedLastTimestamp"),
    ("count", "deprecatedCount"),
    ("reportingComponent", "reportingController"),
)


def to_served(rtype: ResourceType, stored: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of a stored object as the client of ``rtype`` sees it."""
    obj = copy.deepcopy(dict(stored))
    if rtype.storage != (rtype.group, rtype.plural) and rtype.group == "events.k8s.io":
        for core, new in _EVENT_RENAMES:
            if core in obj:
                obj[new] = obj.pop(core)
    obj["apiVersion"] = rtype.api_version
    obj["kind"] = rtype.kind
    return obj


def to_stored(rtype: ResourceType, served: Mapping[str, Any]) -> dict[str, Any]:
    """The stored form of an object written through ``rtype`` (the inverse of :func:`to_served`)."""
    obj = dict(served)
    if rtype.storage != (rtype.group, rtype.plural) and rtype.group == "events.k8s.io":
        for core, new in _EVENT_RENAMES:
            if new in obj:
                obj[core] = obj.pop(new)
        obj["apiVersion"] = "v1"
    else:
        obj["apiVersion"] = f"{rtype.group}/{rtype.storage_version}" if rtype.group else rtype.storage_version
    obj["kind"] = rtype.kind
    return obj


def field_path(rtype: ResourceType, label: str) -> str | None:
    """The dotted path a field-selector label reads, or None if the server does not support it."""
    if label in ("metadata.name", "metadata.namespace"):
        return label
    if rtype.group == "events.k8s.io" and rtype.storage != (rtype.group, rtype.plural):
        for core, new in _EVENT_RENAMES:
            if label == new or label.startswith(new + "."):
                label = core + label[len(new):]
    return label if label in rtype.field_labels else None
