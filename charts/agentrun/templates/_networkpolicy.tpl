{{/*
Egress rules every agentrun pod needs: DNS, the API server, and RabbitMQ/Redis/PostgreSQL, on
the ports of .Values.networkPolicy (to networkPolicy.egressTo, or anywhere when it is empty:
the API server and managed services are outside the cluster's pod network).
*/}}
{{- define "agentrun.networkPolicy.egress" -}}
{{- $np := .Values.networkPolicy -}}
# DNS: cluster DNS resolves the service names in the connection URLs.
- ports:
    - port: 53
      protocol: UDP
    - port: 53
      protocol: TCP
# The Kubernetes API server, then RabbitMQ, Redis and the database.
- ports:
    {{- range (concat $np.apiServerPorts $np.servicePorts) }}
    - port: {{ . }}
      protocol: TCP
    {{- end }}
  {{- with $np.egressTo }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
