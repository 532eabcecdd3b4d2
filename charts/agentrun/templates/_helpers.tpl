{{/*
The chart's name: .Values.nameOverride or the chart name, at most 63 characters (a DNS label).
*/}}
{{- define "agentrun.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The release's full name, the prefix of every resource name: .Values.fullnameOverride, or
"<release>-<chart>", or the release name alone when it already contains the chart's name.
Truncated to 63 characters because some Kubernetes name fields are limited to that.
*/}}
{{- define "agentrun.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The chart label: "<name>-<version>", with "+" (not allowed in label values) replaced.
*/}}
{{- define "agentrun.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The labels every resource of the release carries (app.kubernetes.io/*, helm.sh/chart).
*/}}
{{- define "agentrun.labels" -}}
helm.sh/chart: {{ include "agentrun.chart" . }}
{{ include "agentrun.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentrun
{{- end }}

{{/*
The labels that select the release's pods; never change them in an upgrade (selectors are immutable).
*/}}
{{- define "agentrun.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentrun.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
A component's resource name: "<fullname>-<component>". The full name is cut first so that the
suffix always survives: two components never truncate to the same 63-character name.
Call with (list . "operator").
*/}}
{{- define "agentrun.componentName" -}}
{{- $ctx := index . 0 }}
{{- $component := index . 1 }}
{{- $prefix := include "agentrun.fullname" $ctx | trunc (int (sub 62 (len $component))) | trimSuffix "-" }}
{{- printf "%s-%s" $prefix $component }}
{{- end }}

{{/*
A component's labels: the release's, plus app.kubernetes.io/component. Call with (list . "operator").
*/}}
{{- define "agentrun.componentLabels" -}}
{{ include "agentrun.labels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
The labels that select a component's pods. Call with (list . "operator").
*/}}
{{- define "agentrun.componentSelectorLabels" -}}
{{ include "agentrun.selectorLabels" (index . 0) }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/*
The operator's resource name: "<fullname>-operator", at most 63 characters.
*/}}
{{- define "agentrun.operator.fullname" -}}
{{- include "agentrun.componentName" (list . "operator") }}
{{- end }}

{{/*
The operator's labels: the release's, plus its component.
*/}}
{{- define "agentrun.operator.labels" -}}
{{ include "agentrun.componentLabels" (list . "operator") }}
{{- end }}

{{/*
The labels that select the operator's pods.
*/}}
{{- define "agentrun.operator.selectorLabels" -}}
{{ include "agentrun.componentSelectorLabels" (list . "operator") }}
{{- end }}

{{/*
A ServiceAccount's name: the given name, else "<fullname>-<component>" when the chart creates
it, else "default". Call with (list . "operator" .Values.operator.serviceAccount).
*/}}
{{- define "agentrun.serviceAccountName" -}}
{{- $sa := index . 2 }}
{{- if $sa.create }}
{{- default (include "agentrun.componentName" (list (index . 0) (index . 1))) $sa.name }}
{{- else }}
{{- default "default" $sa.name }}
{{- end }}
{{- end }}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "agentrun.operator.serviceAccountName" -}}
{{- include "agentrun.serviceAccountName" (list . "operator" .Values.operator.serviceAccount) }}
{{- end }}

{{/*
The workers' ServiceAccount name (the operator puts it on every WorkerPool Deployment).
*/}}
{{- define "agentrun.worker.serviceAccountName" -}}
{{- include "agentrun.serviceAccountName" (list . "worker" .Values.workers.serviceAccount) }}
{{- end }}

{{/*
The gateway's ServiceAccount name.
*/}}
{{- define "agentrun.gateway.serviceAccountName" -}}
{{- include "agentrun.serviceAccountName" (list . "gateway" .Values.gateway.serviceAccount) }}
{{- end }}

{{/*
An image reference: repository and tag, the tag defaulting to the chart's appVersion.
Call with (list . .Values.operator.image).
*/}}
{{- define "agentrun.imageRef" -}}
{{- $image := index . 1 }}
{{- printf "%s:%s" $image.repository (default (index . 0).Chart.AppVersion $image.tag) }}
{{- end }}

{{/*
The operator's image (operator/Dockerfile).
*/}}
{{- define "agentrun.operator.image" -}}
{{- include "agentrun.imageRef" (list . .Values.operator.image) }}
{{- end }}

{{/*
The workers' image (worker/Dockerfile): WorkerPools without spec.image, and the gateway.
*/}}
{{- define "agentrun.worker.image" -}}
{{- include "agentrun.imageRef" (list . .Values.workers.image) }}
{{- end }}

{{/*
The environment variables that carry the service URLs, each read from the existing Secret
named by .Values.connection.existingSecret (the chart never holds credentials). The database
URL is optional here: the operator does not use the database.
*/}}
{{- define "agentrun.connectionEnv" -}}
- name: AGENTRUN_BROKER_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.connection.existingSecret }}
      key: {{ .Values.connection.brokerUrlKey }}
- name: AGENTRUN_REDIS_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.connection.existingSecret }}
      key: {{ .Values.connection.redisUrlKey }}
{{ include "agentrun.databaseEnv" . }}
{{- end }}

{{/*
Where the record of runs is: AGENTRUN_DATABASE_URL, or with connection.supabase.enabled the
Supabase project URL and service-role key, all read from the existing Secret.
*/}}
{{- define "agentrun.databaseEnv" -}}
{{- if .Values.connection.supabase.enabled -}}
- name: SUPABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.connection.existingSecret }}
      key: {{ .Values.connection.supabase.urlKey }}
- name: AGENTRUN_SUPABASE_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.connection.existingSecret }}
      key: {{ .Values.connection.supabase.serviceKeyKey }}
{{- else -}}
- name: AGENTRUN_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.connection.existingSecret }}
      key: {{ .Values.connection.databaseUrlKey }}
{{- end }}
{{- end }}
