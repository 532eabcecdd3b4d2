"""The request log of the emulated API server, in the terms RBAC rules are written in.

:mod:`.apiserver` appends one :class:`AuditRecord` per request to ``Emulator.audit``. Tests
compare what the operator and workers really called against the Helm chart's Roles: the
``verb`` is the RBAC verb (``get``, ``list``, ``watch``, ``create``, ``update``, ``patch``,
``delete``, ``deletecollection``), ``group``/``resource``/``subresource`` are what a rule's
``apiGroups``/``resources`` (``agentruns/status``) match, and ``path`` is set instead for
non-resource URLs (discovery, ``/version``, ``/openapi/...``).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class AuditRecord:
    verb: str
    group: str = ""
    version: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str | None = None
    name: str | None = None
    user_agent: str = ""
    #: The non-resource URL (``/apis``), empty for resource requests.
    path: str = ""
    #: The HTTP status; set when the response is complete (a watch: when its stream ends).
    code: int | None = None

    @property
    def rbac_resource(self) -> str:
        """``agentruns`` or ``agentruns/status``: as a Role's ``resources`` entry names it."""
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def verb(method: str, *, named: bool, watch: bool) -> str:
    """The RBAC verb of a resource request."""
    method = method.upper()
    if method in ("GET", "HEAD"):
        return "watch" if watch else ("get" if named else "list")
    if method == "POST":
        return "create"
    if method == "PUT":
        return "update"
    if method == "PATCH":
        return "patch"
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    return method.lower()
