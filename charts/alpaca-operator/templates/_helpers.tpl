{{- define "alpaca-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "alpaca-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "alpaca-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "alpaca-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "alpaca-operator.labels" -}}
{{ include "alpaca-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "alpaca-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "alpaca-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "alpaca-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The ClusterRole of the rights in the custom resources' namespaces (bound cluster-wide, or
in each watched namespace). */}}
{{- define "alpaca-operator.namespacedRole" -}}
{{- printf "%s-namespaced" (include "alpaca-operator.fullname" .) }}
{{- end }}

{{/* The watchNamespaces entries that name one namespace (a DNS label); the others are patterns
(globs, negations), whose namespaces the chart cannot know. Space-separated. */}}
{{- define "alpaca-operator.exactNamespaces" -}}
{{- range .Values.watchNamespaces }}
{{- if regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" . }}{{ . }} {{ end }}
{{- end }}
{{- end }}
