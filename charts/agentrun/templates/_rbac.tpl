{{/*
The RBAC rules of each component, in one place. Each rule says who needs it; a test of the
end-to-end suite (tests/e2e/test_zz_rbac.py) records every API call the operator and a worker
make and checks both ways: every call is allowed, and every granted verb is called. Keep the
lists explicit (never "*").
*/}}

{{/*
The operator's rules on namespaced resources: in a ClusterRole when every namespace is watched,
in a Role in each of watchNamespaces otherwise.
*/}}
{{- define "agentrun.operator.rules" -}}
# kopf watches AgentRuns and patches them (finalizers, its progress annotations); the operator
# deletes finished runs after spec.ttlSecondsAfterFinished.
- apiGroups: ["agentrun.io"]
  resources: ["agentruns"]
  verbs: ["get", "list", "watch", "patch", "delete"]
# The operator owns Pending/Queued, stop requests, retries and deadlines (compare-and-swap
# merge patches carrying metadata.resourceVersion; the current state comes from a GET of
# the run itself).
- apiGroups: ["agentrun.io"]
  resources: ["agentruns/status"]
  verbs: ["patch"]
# kopf watches WorkerPools (the pool index) and patches its annotations on them.
- apiGroups: ["agentrun.io"]
  resources: ["workerpools"]
  verbs: ["list", "watch", "patch"]
# The operator reports a pool's queue, replicas and observedGeneration.
- apiGroups: ["agentrun.io"]
  resources: ["workerpools/status"]
  verbs: ["patch"]
# The operator creates each WorkerPool's Deployment and scales it; the Deployment is owned
# by the pool, so the garbage collector (not the operator) removes it with the pool.
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch"]
# A pool in hpa or keda mode gets a HorizontalPodAutoscaler or KEDA ScaledObject, owned by the
# pool; the operator deletes the one a pool no longer uses when its mode changes.
- apiGroups: ["autoscaling"]
  resources: ["horizontalpodautoscalers"]
  verbs: ["get", "create", "patch", "delete"]
# (the KEDA ScaledObject of a pool in keda mode; without KEDA the GET answers 404: nothing to do)
- apiGroups: ["keda.sh"]
  resources: ["scaledobjects"]
  verbs: ["get", "create", "patch", "delete"]
# Worker pods: the operator indexes them and keeps each one's pod-deletion-cost equal to its
# runs in flight, so a scale-in removes idle workers first.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list", "watch", "patch"]
# A run's spec.workflowRef is resolved into its broker message (dispatch and re-queue).
- apiGroups: ["agentrun.io"]
  resources: ["agentworkflows"]
  verbs: ["get"]
# kopf and the operator post Events on the resources they handle.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/*
The operator's rules on cluster-scoped resources: always a ClusterRole.
*/}}
{{- define "agentrun.operator.clusterRules" -}}
# kopf scans the CustomResourceDefinitions to find the resources it serves.
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["list", "watch"]
{{- end }}

{{/*
The workers' rules: they read their run, report its status and resolve inputFrom.
*/}}
{{- define "agentrun.worker.rules" -}}
# The worker reads the run it executes (its spec, a stop request).
- apiGroups: ["agentrun.io"]
  resources: ["agentruns"]
  verbs: ["get"]
# The worker owns Running, Stopping and the terminal phases, and writes heartbeats.
- apiGroups: ["agentrun.io"]
  resources: ["agentruns/status"]
  verbs: ["patch"]
# spec.inputFrom: a run's input read from a ConfigMap or Secret key.
- apiGroups: [""]
  resources: ["configmaps", "secrets"]
  verbs: ["get"]
{{- end }}

{{/*
The gateway's rules: it lists, reads, creates and stops runs on behalf of its callers (whose
JWT names the namespaces they may use).
*/}}
{{- define "agentrun.gateway.rules" -}}
# GET /runs, GET /runs/{name}, POST /runs, POST /runs/{name}/stop (a merge patch of spec.stop).
- apiGroups: ["agentrun.io"]
  resources: ["agentruns"]
  verbs: ["get", "list", "create", "patch"]
{{- end }}
