{{/* Names and labels shared by every template. */}}

{{- define "pushtask.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pushtask.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pushtask.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: pushtask
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "pushtask.operatorSelector" -}}
app.kubernetes.io/name: pushtask-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pushtask.operatorServiceAccount" -}}
{{- default (printf "%s-operator" (include "pushtask.fullname" .)) .Values.serviceAccount.operator.name -}}
{{- end -}}

{{- define "pushtask.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret holding the MongoDB URI (same name in every namespace the chart writes it). */}}
{{- define "pushtask.mongoSecret" -}}
{{- if .Values.mongodb.existingSecret -}}
{{- .Values.mongodb.existingSecret -}}
{{- else -}}
{{- printf "%s-mongodb" (include "pushtask.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "pushtask.mongoUri" -}}
{{- if .Values.mongodb.bundled.enabled -}}
{{- printf "mongodb://%s-mongodb.%s.svc:27017/pushtask" (include "pushtask.fullname" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.mongodb.uri -}}
{{- end -}}
{{- end -}}

{{/* Namespaces that get a worker ServiceAccount, the MongoDB Secret and a peering object. */}}
{{- define "pushtask.taskNamespaces" -}}
{{- if .Values.watchNamespaces -}}
{{- toJson (uniq .Values.watchNamespaces) -}}
{{- else -}}
{{- toJson (list .Release.Namespace) -}}
{{- end -}}
{{- end -}}

{{/* Exactly one MongoDB source: fail early with a message that says what to set. */}}
{{- define "pushtask.validate" -}}
{{- $n := 0 -}}
{{- if .Values.mongodb.uri }}{{ $n = add1 $n }}{{ end -}}
{{- if .Values.mongodb.existingSecret }}{{ $n = add1 $n }}{{ end -}}
{{- if .Values.mongodb.bundled.enabled }}{{ $n = add1 $n }}{{ end -}}
{{- if ne $n 1 -}}
{{- fail "mongodb: set exactly one of mongodb.uri, mongodb.existingSecret or mongodb.bundled.enabled=true" -}}
{{- end -}}
{{- range $tier, $mode := .Values.degradedTiers -}}
{{- if not (hasKey $.Values.tiers $tier) -}}
{{- fail (printf "degradedTiers: unknown tier %s; tiers are %s" $tier (keys $.Values.tiers | sortAlpha | join ", ")) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The ConfigMap the operator watches for tiers degraded live (degrade.py). */}}
{{- define "pushtask.degradeConfigMap" -}}
{{ include "pushtask.fullname" . }}-degrade
{{- end -}}
