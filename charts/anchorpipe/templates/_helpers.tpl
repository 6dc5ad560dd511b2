{{- define "anchorpipe.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "anchorpipe.labels" -}}
app.kubernetes.io/name: anchorpipe-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "anchorpipe.selectorLabels" -}}
app.kubernetes.io/name: anchorpipe-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "anchorpipe.operatorImage" -}}
{{- printf "%s:%s" .Values.operator.image.repository (default .Chart.AppVersion .Values.operator.image.tag) -}}
{{- end -}}

{{- define "anchorpipe.ingestImage" -}}
{{- printf "%s:%s" .Values.ingest.image.repository (default .Chart.AppVersion .Values.ingest.image.tag) -}}
{{- end -}}

{{/* Nothing in these pods needs privilege. */}}
{{- define "anchorpipe.containerSecurityContext" -}}
runAsNonRoot: true
runAsUser: 65532
runAsGroup: 65532
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}
