"""A Kubernetes API server emulator that kopf, lightkube and kubectl can talk to.

Built on kmock's ``KubernetesEmulator`` (by the kopf author). The test suite runs the operator
against it, and ``agentrun dev`` runs the whole system on one machine with it::

    with EmulatorServer(crds=[yaml.safe_load(open("crds/agentrun.yaml"))]) as server:
        server.write_kubeconfig("kubeconfig")   # then: KUBECONFIG=kubeconfig kubectl get ar
        server.get("agentrun.io/v1alpha1", "agentruns", "default", "my-run")

Emulated as kube-apiserver does it:

* Object identity: ``uid``, ``creationTimestamp``, ``generateName``, 201 on create, 409
  AlreadyExists, name validation, 404 in a missing namespace, 403 in a terminating one.
* One global ``resourceVersion`` bumped by every write; a stale one in a PUT or PATCH body
  (or a failing JSON-patch ``test``) is refused (409 Conflict / 422); no-op writes change nothing.
* ``generation`` counts spec changes; the ``status`` subresource separates status writes;
  ``scale`` for Deployments and CRDs that declare it.
* PATCH: merge, JSON, strategic merge (built-ins only, 415 for custom resources, as the real
  server) and apply (as a merge: no field ownership, no ``managedFields``, no apply conflicts).
* DELETE: finalizers and ``deletionTimestamp``; owner-reference garbage collection (background;
  ``Foreground`` is treated as background, ``Orphan`` strips the references); namespaces
  terminate with their contents; CRDs delete their objects, then stop being served;
  ``preconditions``; ``dryRun=All`` on every write.
* Lists and watches: ``<Kind>List``, label selectors, field selectors (``metadata.name``,
  ``metadata.namespace``, the CRD's ``selectableFields`` and the built-in indexed fields such as
  events' ``involvedObject.*``), ``limit``/``continue``; watches resume after a
  ``resourceVersion`` with each object as it was then, ADDED/DELETED when a selector starts or
  stops matching, ``timeoutSeconds``, BOOKMARKs, ``sendInitialEvents``, 410 when too old.
* Discovery (legacy, unaggregated), ``/version`` (v1.33), ``/openapi/v3`` with the CRD schemas,
  server-side Tables with ``additionalPrinterColumns`` (lists, single objects, watches).
* CRDs registered from the API or the constructor, reported Established; their objects are
  defaulted and validated by ``agentrun.schema`` (or an injected ``admission=``), with
  validation ratcheting; unknown fields pruned with a warning, 400 under ``fieldValidation=Strict``.
* Built-in kinds: namespaces, pods, configmaps, secrets, events (core and events.k8s.io, one
  store), services, serviceaccounts, deployments, leases, HPAs, CRDs, kopf peerings.
* ``Emulator.audit``: every request as an RBAC verb on group/resource/subresource.

Not emulated: authentication, authorization (everything is allowed), admission webhooks,
controllers (no ReplicaSets or Pods behind a Deployment, no HPA scaling, no Event TTL, pods are
deleted at once), conversion webhooks (multi-version CRDs only change ``apiVersion``),
``managedFields``, protobuf, aggregated discovery, ``/openapi/v2``, CEL transition rules.

Modules: :mod:`.apiserver` (the :class:`Emulator`), :mod:`.runner` (:class:`EmulatorServer`),
:mod:`.routing`, :mod:`.watching`, :mod:`.resources`, :mod:`.discovery`, :mod:`.patching`,
:mod:`.selectors`, :mod:`.tables`, :mod:`.validation`, :mod:`.auditing`, :mod:`.errors`.
"""

from agentrun_local.emulator.apiserver import Emulator
from agentrun_local.emulator.auditing import AuditRecord
from agentrun_local.emulator.errors import ApiError
from agentrun_local.emulator.resources import ResourceType
from agentrun_local.emulator.runner import EmulatorServer
from agentrun_local.emulator.validation import Admission, FieldError

__all__ = [
    "Admission",
    "ApiError",
    "AuditRecord",
    "Emulator",
    "EmulatorServer",
    "FieldError",
    "ResourceType",
]
