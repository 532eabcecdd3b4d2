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
The operator's resource name: "<fullname>-operator", at most 63 characters.
*/}}
{{- define "agentrun.operator.fullname" -}}
{{- printf "%s-operator" (include "agentrun.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The operator's labels: the release's, plus its component.
*/}}
{{- define "agentrun.operator.labels" -}}
{{ include "agentrun.labels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The labels that select the operator's pods.
*/}}
{{- define "agentrun.operator.selectorLabels" -}}
{{ include "agentrun.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{/*
The operator's ServiceAccount: the given name, else the operator's full name when the chart
creates it, else "default".
*/}}
{{- define "agentrun.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "agentrun.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The agentrun image reference: repository and tag, the tag defaulting to the chart's appVersion.
*/}}
{{- define "agentrun.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
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
- name: AGENTRUN_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .Values.connection.existingSecret }}
      key: {{ .Values.connection.databaseUrlKey }}
      optional: true
{{- end }}
