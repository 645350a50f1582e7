{{/*
Names and labels shared by every template of the workerfleet chart.
*/}}

{{/* The chart name, overridable with nameOverride. */}}
{{- define "workerfleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name prefix: the release name, plus the chart name unless it already contains it. */}}
{{- define "workerfleet.fullname" -}}
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

{{/* Name of the operator's Deployment, pods and metrics Service. */}}
{{- define "workerfleet.operatorName" -}}
{{- printf "%s-operator" (include "workerfleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of the operator's metrics Service: a DNS label, so at most 63 characters whatever
the release or fullnameOverride (the operator's name is cut to make room for "-metrics"). */}}
{{- define "workerfleet.metricsServiceName" -}}
{{- printf "%s-metrics" (include "workerfleet.operatorName" . | trunc 55 | trimSuffix "-") }}
{{- end }}

{{/* chart label value */}}
{{- define "workerfleet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "workerfleet.labels" -}}
{{ include "workerfleet.chartLabels" . }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The labels the chart sets itself on every resource (commonLabels may not name them). */}}
{{- define "workerfleet.chartLabels" -}}
helm.sh/chart: {{ include "workerfleet.chart" . }}
{{ include "workerfleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: workerfleet
{{- end }}

{{/*
Fail when commonLabels name a label the chart sets itself, or a pod's podLabels one the chart or
commonLabels set: the manifest would carry that key twice, which strict YAML readers refuse
("mapping key ... already defined", naming neither value) and others read as the last value (a
selector label changed that way no longer matches the Deployment's selector). Called
once per pod template with (list $ "operator.podLabels" .Values.operator.podLabels).
*/}}
{{- define "workerfleet.checkLabels" -}}
{{- $root := index . 0 }}{{- $name := index . 1 }}{{- $extra := index . 2 | default dict }}
{{- $chart := include "workerfleet.chartLabels" $root | fromYaml }}
{{- range $key, $_ := $root.Values.commonLabels }}
{{- if hasKey $chart $key }}
{{- fail (printf "commonLabels.%s is a label the chart sets itself on every resource: leave it out (the chart's own labels cannot be overridden)" $key) }}
{{- end }}
{{- end }}
{{- range $key, $_ := $extra }}
{{- if hasKey $chart $key }}
{{- fail (printf "%s.%s is a label the chart sets itself on the pod: leave it out" $name $key) }}
{{- end }}
{{- if hasKey ($root.Values.commonLabels | default dict) $key }}
{{- fail (printf "%s.%s is set by commonLabels too: name it in one of them" $name $key) }}
{{- end }}
{{- end }}
{{- end }}

{{/* Selector labels of the operator pods (immutable once installed). */}}
{{- define "workerfleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "workerfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "workerfleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "workerfleet.operatorName" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image: repository@digest when a digest is given, else repository:tag. */}}
{{- define "workerfleet.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag }}
{{- if eq $tag "latest" }}
{{- fail "image.tag must not be \"latest\": pin a version (or image.digest)" }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/*
The namespaces the operator watches, as a JSON list: [] means the whole cluster (only with
clusterWide: true, an explicit choice); otherwise watchNamespaces, or the release namespace alone.
*/}}
{{- define "workerfleet.watchedNamespaces" -}}
{{- if .Values.clusterWide }}
{{- if .Values.watchNamespaces }}
{{- fail "clusterWide: true watches every namespace: leave watchNamespaces empty (or set clusterWide: false)" }}
{{- end }}
{{- toJson (list) }}
{{- else }}
{{- toJson (.Values.watchNamespaces | default (list .Release.Namespace)) }}
{{- end }}
{{- end }}

{{/* Namespaces with workers, for the workers' NetworkPolicy. */}}
{{- define "workerfleet.workerNamespaces" -}}
{{- $ns := .Values.networkPolicy.workers.namespaces | default (include "workerfleet.watchedNamespaces" . | fromJsonArray) }}
{{- toJson $ns }}
{{- end }}

{{/* Name of the console's Deployment, pods, Service and RBAC objects. */}}
{{- define "workerfleet.consoleName" -}}
{{- printf "%s-console" (include "workerfleet.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of the console pods (the operator's name and instance, component console). */}}
{{- define "workerfleet.consoleSelectorLabels" -}}
app.kubernetes.io/name: {{ include "workerfleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: console
{{- end }}

{{/* The labels of every resource, with another component: (list $ "redis"). */}}
{{- define "workerfleet.componentLabels" -}}
{{ include "workerfleet.labels" (index . 0) | replace "app.kubernetes.io/component: operator" (printf "app.kubernetes.io/component: %s" (index . 1)) }}
{{- end }}

{{/* Labels on every console resource. */}}
{{- define "workerfleet.consoleLabels" -}}
{{ include "workerfleet.componentLabels" (list . "console") }}
{{- end }}

{{/* The console's ServiceAccount name. */}}
{{- define "workerfleet.consoleServiceAccountName" -}}
{{- if .Values.console.serviceAccount.create }}
{{- default (include "workerfleet.consoleName" .) .Values.console.serviceAccount.name }}
{{- else }}
{{- required "console.serviceAccount.name is required when console.serviceAccount.create is false" .Values.console.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* A Prometheus duration (the schema's `1m30s`, `500ms`...) in milliseconds. */}}
{{- define "workerfleet.durationMillis" -}}
{{- $units := dict "h" 3600000 "m" 60000 "s" 1000 "ms" 1 }}
{{- $total := 0 }}
{{- range regexFindAll "[0-9]+(ms|h|m|s)" . -1 }}
{{- $number := regexFind "^[0-9]+" . }}
{{- $total = add $total (mul (int64 $number) (get $units (trimPrefix $number .))) }}
{{- end }}
{{- $total }}
{{- end }}

{{/*
Fail when a monitor's scrapeTimeout is longer than its interval: the Prometheus Operator drops
such a ServiceMonitor/PodMonitor ("scrapeTimeout greater than scrapeInterval") and the operator
goes unscraped. JSON schema cannot compare two values. Called with (list "serviceMonitor" $values).
*/}}
{{- define "workerfleet.checkScrapeTimeout" -}}
{{- $name := index . 0 }}{{- $m := index . 1 }}
{{- if gt (include "workerfleet.durationMillis" $m.scrapeTimeout | int64) (include "workerfleet.durationMillis" $m.interval | int64) }}
{{- fail (printf "metrics.%s.scrapeTimeout (%s) is longer than metrics.%s.interval (%s): the Prometheus Operator drops such a monitor and the operator would go unscraped (WorkerfleetOperatorDown, every pool alert blind). Lower the timeout or raise the interval" $name $m.scrapeTimeout $name $m.interval) }}
{{- end }}
{{- end }}
