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

{{/* nodeSelector, tolerations and affinity of a pod, from a values block holding them. */}}
{{- define "anchorpipe.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
The operator's --ingest-pod-defaults document (operator/src/pod_defaults.rs): the
platform's settings of every tenant's ingest pods. Empty settings are left out; resource
quantities are written as strings, the form the operator's types read.
*/}}
{{- define "anchorpipe.ingestPodDefaults" -}}
{{- $pods := .Values.ingest.pods -}}
{{- $out := dict -}}
{{- with $pods.imagePullSecrets }}
{{- $names := list }}
{{- range . }}{{- $names = append $names .name }}{{- end }}
{{- $_ := set $out "imagePullSecrets" $names }}
{{- end }}
{{- with $pods.nodeSelector }}{{- $_ := set $out "nodeSelector" . }}{{- end }}
{{- with $pods.tolerations }}{{- $_ := set $out "tolerations" . }}{{- end }}
{{- with $pods.affinity }}{{- $_ := set $out "affinity" . }}{{- end }}
{{- with $pods.resources }}
{{- $resources := dict }}
{{- range $kind, $quantities := . }}
{{- $strings := dict }}
{{- range $name, $quantity := $quantities }}{{- $_ := set $strings $name (toString $quantity) }}{{- end }}
{{- $_ := set $resources $kind $strings }}
{{- end }}
{{- $_ := set $out "resources" $resources }}
{{- end }}
{{- toJson $out -}}
{{- end -}}

{{/* What release-finalizers needs on IngestionEndpoints: find them, drop its finalizer. */}}
{{- define "anchorpipe.releaseFinalizersRules" -}}
- apiGroups: ["anchorpipe.dev"]
  resources: ["ingestionendpoints"]
  # list: every endpoint in scope; get: re-read one that changed; patch: the finalizers.
  verbs: ["get", "list", "patch"]
{{- end -}}
