{{- define "shardwright.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}{{ .Release.Name | trunc 63 | trimSuffix "-" }}{{- else -}}{{ printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" }}{{- end -}}
{{- end -}}

{{- define "shardwright.labels" -}}
app.kubernetes.io/name: shardwright
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: shardwright
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "shardwright.selector" -}}
app.kubernetes.io/name: shardwright
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "shardwright.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "shardwright.certSecret" -}}
{{ .Values.webhook.certSecret | default (printf "%s-webhook-cert" (include "shardwright.fullname" .)) }}
{{- end -}}
