{{/* Names, labels and the values several templates share. */}}

{{- define "lcp.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "lcp.fullname" -}}
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

{{- define "lcp.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The component is part of every selector: the bundled Redis shares name and instance. */}}
{{- /* One component's selector labels: include "lcp.componentSelectorLabels" (list $ "redis") */ -}}
{{- define "lcp.componentSelectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "lcp.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "lcp.selectorLabels" -}}
{{ include "lcp.componentSelectorLabels" (list . "proxy") }}
{{- end }}

{{- define "lcp.redisSelectorLabels" -}}
{{ include "lcp.componentSelectorLabels" (list . "redis") }}
{{- end }}

{{- define "lcp.testSelectorLabels" -}}
{{ include "lcp.componentSelectorLabels" (list . "test") }}
{{- end }}

{{- define "lcp.commonLabels" -}}
helm.sh/chart: {{ include "lcp.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: lunary-cache-proxy
{{- end }}

{{- define "lcp.labels" -}}
{{ include "lcp.commonLabels" . }}
{{ include "lcp.selectorLabels" . }}
{{- end }}

{{- define "lcp.redisLabels" -}}
{{ include "lcp.commonLabels" . }}
{{ include "lcp.redisSelectorLabels" . }}
{{- end }}

{{- define "lcp.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "lcp.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "lcp.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The Secret holding the scope secret, the admin token and a Redis URL with credentials. */}}
{{- define "lcp.secretName" -}}
{{- default (include "lcp.fullname" .) .Values.secret.existingSecret }}
{{- end }}

{{- define "lcp.redisName" -}}
{{- printf "%s-redis" (include "lcp.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/* PROXY_* settings as the ConfigMap holds them: strings, integers without an exponent. */}}
{{- define "lcp.settings" -}}
{{- $settings := deepCopy .Values.settings }}
{{- if .Values.redis.enabled }}
{{- if .Values.settings.PROXY_REDIS_URL }}
{{- fail "set either redis.enabled or settings.PROXY_REDIS_URL, not both" }}
{{- end }}
{{- $_ := set $settings "PROXY_REDIS_URL" (printf "redis://%s:6379/0" (include "lcp.redisName" .)) }}
{{- end }}
{{- range $name := keys $settings | sortAlpha }}
{{- $value := get $settings $name }}
{{- if and (kindIs "float64" $value) (eq $value (floor $value)) }}
{{- $value = int64 $value }}
{{- end }}
{{- if ne (toString $value) "" }}
{{ $name }}: {{ toString $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The container port: the one PROXY_PORT names. */}}
{{- define "lcp.containerPort" -}}
{{- .Values.settings.PROXY_PORT | default 8080 | int }}
{{- end }}
